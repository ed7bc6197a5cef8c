"""One model to q4_k_m as one job vs as 4 split parts on 2 workers: wall time and peak RSS of every process.

    flock /work/machine.lock python bench/bench_split.py /work/bench-data/split14/model.ckpt [--parts 4] [--reps 2]
        [--json bench/results/split.json]

Cases (each writes to a fresh folder; the split cases must give identical bytes):

* ``one``        ``ms2gguf CKPT llama2 OUT --outtype q4_k_m --threads 2``: one process, both cores
* ``one-1t``     the same with ``--threads 1``
* ``one-split``  ``one`` with ``--split-max-size S`` (S picked so the plan has ``--parts`` files): one process
* ``bulk``       ``ms2gguf bulk JOBS --workers 2``, one job with ``split_max_size: S``: one task per part on 2 local
  worker processes (1 thread each)
* ``parts``      ``--parts`` separate ``ms2gguf ... --split-part K --threads 1`` processes, 2 at a time: what a
  Slurm job array or N machines do

Peak RSS is each process's VmHWM, sampled from /proc every 20 ms over the whole process tree (the high-water mark
only grows, so a late sample is still right; the bulk workers live until the end).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from benchutil import machine_info, wait_quiet  # noqa: E402

MS2GGUF = [sys.executable, "-m", "gguf_out.cli"]


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """VmHWM of every process under the given roots, by pid, with its command's first words."""

    def __init__(self):
        super().__init__(daemon=True)
        self.roots, self.peaks, self.names, self.stop = [], {}, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            todo = list(self.roots)
            while todo:
                pid = todo.pop()
                todo += _children(pid)
                hwm = _hwm(pid)
                if hwm:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
                    if pid not in self.names:
                        try:
                            with open(f"/proc/{pid}/cmdline", "rb") as f:
                                self.names[pid] = f.read().replace(b"\0", b" ").decode()[:160]
                        except OSError:
                            self.names[pid] = "?"
            time.sleep(0.02)


def run_processes(commands, parallel):
    """Run the commands, ``parallel`` at a time; wall seconds and {pid: (peak RSS, command)}."""
    sampler = Sampler()
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    waiting = list(commands)
    running = []
    while waiting or running:
        while waiting and len(running) < parallel:
            proc = subprocess.Popen(waiting.pop(0), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            sampler.roots.append(proc.pid)
            running.append(proc)
        for proc in list(running):
            if proc.poll() is not None:
                err = proc.stderr.read().decode()
                if proc.returncode:
                    raise SystemExit(f"failed ({proc.returncode}): {proc.args}\n{err}")
                running.remove(proc)
        time.sleep(0.01)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sampler.stop.set()
    sampler.join()
    return wall, cpu, {pid: (rss, sampler.names.get(pid, "?")) for pid, rss in sampler.peaks.items()}


def _total_bytes(ckpt):
    """Tensor data bytes of the q4_k_m output (from the plan: every tensor's size)."""
    from gguf_out import conversion

    args = conversion.build_parser().parse_args([str(ckpt), "llama2", "/tmp/x.gguf", "--outtype", "q4_k_m", "-q"])
    args.plan_only = True
    captured = {}
    real = conversion._target

    def spy(*a, **k):
        target = real(*a, **k)
        captured["nbytes"] = sum(target.nbytes)
        return target

    conversion._target = spy
    try:
        conversion.run(args)
    finally:
        conversion._target = real
    return captured["nbytes"]


def cases(ckpt, work, parts, size):
    jobs = work / "jobs.yaml"
    jobs.write_text(json.dumps([{"ckpt": str(ckpt), "map": "llama2", "out": str(work / "bulk" / "m.gguf"),
                                 "outtype": "q4_k_m", "split_max_size": size}]))
    base = [str(ckpt), "llama2"]
    return {
        "one": ([MS2GGUF + base + [str(work / "one" / "m.gguf"), "--outtype", "q4_k_m", "--threads", "2", "-q"]], 1),
        "one-1t": ([MS2GGUF + base + [str(work / "one-1t" / "m.gguf"), "--outtype", "q4_k_m", "--threads", "1",
                                      "-q"]], 1),
        "one-split": ([MS2GGUF + base + [str(work / "one-split" / "m.gguf"), "--outtype", "q4_k_m", "--threads",
                                         "2", "--split-max-size", str(size), "-q"]], 1),
        "bulk": ([MS2GGUF + ["bulk", str(jobs), "--workers", "2"]], 1),
        "parts": ([MS2GGUF + base + [str(work / "parts" / "m.gguf"), "--outtype", "q4_k_m", "--threads", "1",
                                     "--split-max-size", str(size), "--split-part", str(k), "-q"]
                   for k in range(1, parts + 1)], 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/work/bench-data/split14-out"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    total = _total_bytes(args.ckpt)
    from gguf_out import api
    size = None
    for step in range(0, 200):         # the smallest size, in 1% steps above total / parts, giving that many files
        candidate = total * (100 + step) // (100 * args.parts)
        files = api.plan(args.ckpt, "/tmp/x.gguf", "llama2", outtype="q4_k_m",
                         split_max_size=candidate).outputs["q4_k_m"]
        if len(files) == args.parts:
            size = candidate
            break
    assert size, "no split size gives the requested number of parts"
    print(f"q4_k_m tensor data {total:,} bytes; --split-max-size {size} gives {args.parts} files", flush=True)
    runs = []
    names = ["one", "one-1t", "one-split", "bulk", "parts"]
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            shutil.rmtree(args.work, ignore_errors=True)
            (args.work / name).mkdir(parents=True)
            commands, parallel = cases(args.ckpt, args.work, args.parts, size)[name]
            others = wait_quiet()
            wall, cpu, procs = run_processes(commands, parallel)
            files = sorted((args.work / name).iterdir())
            digest = {p.name: _digest(p) for p in files}
            # the processes that convert: the bulk pool's workers, else every ms2gguf process
            workers = {pid: rss for pid, (rss, cmd) in procs.items() if "spawn_main" in cmd} or \
                {pid: rss for pid, (rss, cmd) in procs.items() if "gguf_out.cli" in cmd}
            driver = max((rss for pid, (rss, cmd) in procs.items() if " bulk " in cmd), default=None)
            runs.append({"case": name, "rep": rep, "wall": round(wall, 2), "cpu": round(cpu, 2), "files": digest,
                         "processes": {str(pid): {"rss": rss, "cmd": cmd} for pid, (rss, cmd) in procs.items()},
                         "max_rss": max(workers.values()), "driver_rss": driver, "quiet_wait": others})
            print(f"{name:<10} rep {rep}: {wall:6.1f} s wall, {cpu:6.1f} s CPU, {len(files)} files, peak RSS per "
                  f"worker {max(workers.values()) / 1e6:.0f} MB ({len(workers)} workers)"
                  + (f", bulk driver {driver / 1e6:.0f} MB" if driver else ""), flush=True)
    split_cases = ("one-split", "bulk", "parts")
    split_digests = {json.dumps(r["files"], sort_keys=True) for r in runs if r["case"] in split_cases}
    assert len(split_digests) == 1, "the split cases wrote different bytes"
    summary = {}
    for name in names:
        mine = [r for r in runs if r["case"] == name]
        summary[name] = {"wall_min": min(r["wall"] for r in mine), "wall_median": sorted(r["wall"] for r in mine)[
            len(mine) // 2], "cpu_median": sorted(r["cpu"] for r in mine)[len(mine) // 2],
            "max_rss_mb": round(max(r["max_rss"] for r in mine) / 1e6)}
    print("\n| case | wall (min / median) | CPU (median) | peak RSS per worker |\n|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['wall_min']:.1f} / {s['wall_median']:.1f} s | {s['cpu_median']:.1f} s | "
              f"{s['max_rss_mb']} MB |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "commit": commit, "ckpt": str(args.ckpt),
                                         "split_max_size": size, "tensor_bytes": total, "runs": runs,
                                         "summary": summary}, indent=1))


def _digest(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    main()
