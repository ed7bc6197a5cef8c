"""Helpers shared by the benchmark scripts: page-cache control, machine load, machine description."""

import os
import platform
import shutil
import subprocess
import time


def timed(fn):
    """(seconds, result) of one call of ``fn``."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def drop_caches():
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; returns None on success or why it failed (needs root)."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def cached_fraction(path):
    """Fraction of a file resident in the page cache (util-linux ``fincore``), or None."""
    if not shutil.which("fincore"):
        return None
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]) / max(1, int(out[1]))
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return None


def cpu_busy():
    """System-wide busy CPU seconds so far, all CPUs together (/proc/stat; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait=120.0, threshold=0.15, window=1.0):
    """Wait until the machine was less than ``threshold`` busy (fraction of all CPUs) for ``window`` seconds.

    On a shared machine other work slows every measurement; this waits for a quiet moment, up to max_wait
    seconds. Returns (seconds waited, busy fraction of the last window).
    """
    ncpu = os.cpu_count() or 1
    t0 = time.monotonic()
    while True:
        b0 = cpu_busy()
        time.sleep(window)
        busy = (cpu_busy() - b0) / (window * ncpu)
        waited = time.monotonic() - t0
        if busy < threshold or waited >= max_wait:
            return waited, busy


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str)).stdout.strip()
    except OSError:
        return ""


def machine_info(path="/work"):
    """A description of the machine and software, for the results."""
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    lscpu = _run(["lscpu"])
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L2 cache", "L3 cache"):
            info[key.strip()] = value.strip()
    with open("/proc/meminfo") as f:
        info["MemTotal_GiB"] = round(int(f.readline().split()[1]) / 2**20, 1)
    info["df"] = _run(["df", "-h", path]).splitlines()[-1:]
    mount = _run(f"findmnt -no SOURCE,FSTYPE,OPTIONS --target {path}")
    info["mount"] = mount
    dev = os.path.basename(mount.split()[0]) if mount else ""
    for name in ("read_ahead_kb", "rotational", "scheduler"):
        try:
            with open(f"/sys/block/{dev}/queue/{name}") as f:
                info[f"{dev}.{name}"] = f.read().strip()
        except OSError:
            pass
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["thp"] = f.read().strip()
    except OSError:
        pass
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version
        info["gguf"] = version("gguf")
    except Exception:       # noqa: BLE001 - informational only
        pass
    info["cp"] = _run(["cp", "--version"]).splitlines()[:1]
    return info



def prime_memory(src, scratch):
    """Copy ``src`` to ``scratch`` and delete it, right before a measured run; returns the seconds spent.

    On this VM free memory is handed back to the host (virtio-balloon free page reporting in 2 MiB blocks,
    /sys/module/page_reporting): the next process to allocate that memory pays a host-side fault per page,
    seen as kernel (sys) time. The same 2 GB cp took 0.55 s right after another run had freed memory and
    1.5-4 s after a few idle seconds; the same f16 conversion 1.1 s or 6.3 s depending on what ran before it.
    Freeing a file-sized batch of page cache just before the run gives every run the same, fast start.
    """
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(scratch)], check=True)
    os.unlink(scratch)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0
