"""Benchmark msckpt's reader: index a large checkpoint, stream every tensor's bytes, compare with ``cat``.

    python bench/bench_reader.py /work/bench-data/f16/model.ckpt [--cold] [--repeats 2] [--json OUT]
    python bench/bench_reader.py /work/bench-data/sparse70b/model.ckpt --index-only

Every measurement runs in its own fresh subprocess (``--worker MODE``), so its peak RSS (ru_maxrss of that
process, RUSAGE_SELF) belongs to that measurement alone. Modes:

  baseline     ``import msckpt`` and nothing else: the interpreter + numpy floor of every other number.
  index        ``msckpt.open_checkpoint`` (walks the record headers), lists the tensors, closes.
  pread        index, then read every tensor's ``byte_ranges()`` with ``os.preadv`` into one reusable 16 MiB buffer.
  mmap         index, then copy every tensor's bytes out of msckpt's memory map (``Tensor.source.view``, what
               ``Tensor.array()`` returns for a single-record tensor) 16 MiB at a time into a reusable buffer.
  array        index, then ``Tensor.array()`` for every tensor and touch it (multi-record tensors are materialized
               whole: this is the API's documented behaviour, shown for its memory cost).
  cat          ``cat FILE > /dev/null`` (a subprocess of the worker-less parent; RSS not meaningful).

Warm cache: before every run the cache is dropped and the file read once with cat (a reproducible "file was just
read" state; a cache left over from writing the file holds smaller folios, see RESULTS.md); each mode is run
``--repeats`` times, interleaved.
With ``--index-only`` the warm-up is one unmeasured index run instead (so a huge sparse file is not read whole).
Cold cache (``--cold``): ``sync; echo 3 > /proc/sys/vm/drop_caches`` before every run (needs root; reported if
refused). Page-cache residency of the file before each run is measured with ``fincore`` when available.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchutil import cached_fraction, cpu_busy, drop_caches, machine_info, wait_quiet

# BENCH_REPO=/path/to/a/scratch/copy benchmarks another source tree (e.g. a prototype fix) with the same script
REPO = Path(os.environ.get("BENCH_REPO") or Path(__file__).resolve().parent.parent)
PY = sys.executable
CHUNK = 16 << 20


# ----------------------------------------------------------------------------------------------- worker side

def _status():
    """VmHWM / VmRSS / RssAnon / RssFile of this process, in MB (from /proc/self/status)."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def _io_read_mb():
    """read_bytes from /proc/self/io: storage reads caused by this process (readahead included), in MB."""
    try:
        for line in open("/proc/self/io"):
            if line.startswith("read_bytes:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


def worker(mode, path):
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    import msckpt
    import numpy as np
    t_import = time.perf_counter() - t0
    result = {"mode": mode, "import_s": t_import}
    if mode == "baseline":
        result.update(maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, status=_status())
        return result

    t0 = time.perf_counter()
    ckpt = msckpt.open_checkpoint(path)
    tensors = list(ckpt)
    t_index = time.perf_counter() - t0
    result.update(index_s=t_index, tensors=len(tensors), records=sum(t.records for t in tensors),
                  file_bytes=ckpt.file_size, tensor_bytes=sum(t.nbytes for t in tensors))
    after_index = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["index_maxrss_mb"] = after_index
    result["index_status"] = _status()
    result["index_read_mb"] = _io_read_mb()     # bytes this process caused to be read from the disk

    t0 = time.perf_counter()
    done = 0
    if mode == "pread":
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        fd = ckpt.source.fileno()
        for t in tensors:
            for off, n in t.byte_ranges():
                end = off + n
                while off < end:
                    want = min(CHUNK, end - off)
                    got = os.preadv(fd, [view[:want]], off)
                    if got <= 0:
                        raise OSError(f"short read at {off}")
                    off += got
                    done += got
    elif mode == "mmap":
        buf = np.empty(CHUNK, np.uint8)
        for t in tensors:
            for off, n in t.byte_ranges():
                for pos in range(0, n, CHUNK):
                    m = min(CHUNK, n - pos)
                    buf[:m] = np.frombuffer(t.source.view(off + pos, m), np.uint8)
                    done += m
    elif mode == "array":
        for t in tensors:
            a = t.array()
            flat = a.reshape(-1).view(np.uint8)
            # touch every page once (a strided read, one byte per 4 KiB page)
            int(flat[::4096].sum())
            done += a.nbytes
            del a, flat
    elif mode != "index":
        raise SystemExit(f"unknown mode {mode}")
    t_stream = time.perf_counter() - t0
    result["stream_status"] = _status()    # before close: RssFile still holds the touched mapped pages
    ckpt.close()
    result["total_read_mb"] = _io_read_mb()
    result.update(stream_s=t_stream, streamed_bytes=done,
                  maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if mode != "index" and done != result["tensor_bytes"]:
        raise SystemExit(f"streamed {done} bytes, expected {result['tensor_bytes']}")
    return result


# ----------------------------------------------------------------------------------------------- parent side

def run_worker(mode, path):
    t0 = time.perf_counter()
    proc = subprocess.run([PY, __file__, "--worker", mode, str(path)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"worker {mode} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def run_cat(path):
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", str(path)], stdout=null, check=True)
    return {"mode": "cat", "process_wall_s": time.perf_counter() - t0, "stream_s": time.perf_counter() - t0}


QUIET = {"max_wait": 120.0, "threshold": 0.15}


def measure(mode, path, cold, warm_by="cat"):
    note = None
    waited, busy = wait_quiet(**QUIET)
    if cold:
        note = drop_caches()
    elif warm_by == "cat":
        # A reproducible warm state: empty the cache, then read the file once (as after a download or a cp).
        # Dropping first matters: pages cached by a sequential read sit in large (2 MiB) folios, pages left
        # from writing the file in small ones, and memory-mapped access counts whole folios in RSS.
        note = drop_caches()
        run_cat(path)
    else:
        run_worker("index", path)   # --index-only (e.g. a huge sparse file): warm only what indexing reads
    cached = cached_fraction(path)
    b0 = cpu_busy()
    result = run_cat(path) if mode == "cat" else run_worker(mode, path)
    result["machine_busy_cpu_s"] = cpu_busy() - b0     # all processes, this run included
    result.update(cached_before=cached, quiet_wait_s=waited, busy_before=busy)
    if note:
        result["drop_caches_error"] = note
    return result


def summarize(runs, size):
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rs = [r for r in runs if r["mode"] == mode]
        walls = [r["process_wall_s"] for r in rs]
        row = {"mode": mode, "runs": len(rs), "process_wall_s": walls,
               "cached_before": [r.get("cached_before") for r in rs],
               "machine_busy_cpu_s": [r.get("machine_busy_cpu_s") for r in rs]}
        if "stream_s" in rs[0] and mode != "cat":
            row["stream_s"] = [r["stream_s"] for r in rs]
            row["stream_MBps"] = [r["streamed_bytes"] / r["stream_s"] / 1e6 if r["stream_s"] else None for r in rs]
        if mode == "cat":
            row["MBps"] = [size / w / 1e6 for w in walls]
        if "index_s" in rs[0]:
            row["index_s"] = [r["index_s"] for r in rs]
            row["index_disk_read_mb"] = [r.get("index_read_mb") for r in rs]
            row["index_maxrss_mb"] = max(r["index_maxrss_mb"] for r in rs)
        if "maxrss_mb" in rs[0]:
            row["maxrss_mb"] = max(r["maxrss_mb"] for r in rs)
        if "stream_status" in rs[0]:
            row["at_end_rss_anon_mb"] = max(r["stream_status"].get("RssAnon", 0) for r in rs)
            row["at_end_rss_file_mb"] = max(r["stream_status"].get("RssFile", 0) for r in rs)
        rows.append(row)
    return rows


def fmt(values, spec="{:.2f}"):
    return " / ".join("-" if v is None else spec.format(v) for v in values)


def print_table(title, rows, size):
    print(f"\n{title}")
    print("machine busy cpu s: CPU seconds used by all processes during the run, this one included; much more than "
          "the run's own time means other work competed with it")
    print(f"{'mode':9s} {'process wall s':>18s} {'index s':>16s} {'stream s':>16s} {'stream MB/s':>16s} "
          f"{'peak RSS MB':>11s} {'end anon/file MB':>17s} {'cached':>10s}  {'index disk read MB':>20s}  "
          f"machine busy cpu s")
    for r in rows:
        mbps = r.get("stream_MBps") or r.get("MBps") or []
        print(f"{r['mode']:9s} {fmt(r['process_wall_s']):>18s} {fmt(r.get('index_s', []), '{:.4f}'):>16s} "
              f"{fmt(r.get('stream_s', [])):>16s} {fmt(mbps, '{:.0f}'):>16s} "
              f"{r.get('maxrss_mb', float('nan')):11.1f} "
              f"{r.get('at_end_rss_anon_mb', float('nan')):8.1f}/{r.get('at_end_rss_file_mb', float('nan')):<8.1f} "
              f"{fmt(r['cached_before'], '{:.0%}'):>10s}  {fmt(r.get('index_disk_read_mb', []), '{:.0f}'):>20s}  "
              f"{fmt(r['machine_busy_cpu_s'], '{:.1f}')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", nargs="?", default="/work/bench-data/f16/model.ckpt")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cold", action="store_true", help="also run with the page cache dropped before each run")
    p.add_argument("--index-only", action="store_true", help="only baseline + index (e.g. for a sparse file)")
    p.add_argument("--modes", default="cat,pread,mmap,array", help="streaming modes (default: %(default)s)")
    p.add_argument("--json", help="write all raw results here")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="before each run, wait up to this many seconds "
                   "for the machine to be idle (< --quiet-threshold busy for 1 s) (default: %(default)s)")
    p.add_argument("--quiet-threshold", type=float, default=0.15)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    QUIET.update(max_wait=a.quiet_wait, threshold=a.quiet_threshold)
    if a.worker:
        print(json.dumps(worker(a.worker, a.ckpt)))
        return 0

    path = Path(a.ckpt)
    size = path.stat().st_size
    print(f"file: {path} ({size:,} bytes, {size / 1e9:.3f} GB)")
    report = {"file": str(path), "size": size, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "repo": str(REPO), "commit": os.environ.get("BENCH_COMMIT"), "machine": machine_info(str(path.parent))}

    index_modes = ["baseline", "index"]
    stream_modes = [] if a.index_only else [m for m in a.modes.split(",") if m]
    warm = []
    for _ in range(a.repeats):
        for mode in index_modes + stream_modes:
            warm.append(measure(mode, path, cold=False, warm_by="index" if a.index_only else "cat"))
    report["warm"] = warm
    rows = summarize(warm, size)
    report["warm_summary"] = rows
    print_table(f"warm page cache (runs: {a.repeats}; values per run, ' / '-separated)", rows, size)

    if a.cold:
        cold = []
        for _ in range(a.repeats):
            for mode in index_modes[1:] + stream_modes:
                cold.append(measure(mode, path, cold=True))
        errors = {r["drop_caches_error"] for r in cold if "drop_caches_error" in r}
        report["cold"] = cold
        report["cold_summary"] = summarize(cold, size)
        if errors:
            print(f"\ncold cache NOT available: drop_caches failed: {'; '.join(errors)}")
            report["cold_error"] = sorted(errors)
        print_table("cold page cache (sync; echo 3 > /proc/sys/vm/drop_caches before every run)",
                    report["cold_summary"], size)

    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"\nraw results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
