"""Benchmark ``ms2gguf`` conversions against ``cp`` of the same file on the same filesystem.

    python bench/bench_convert.py [--data /work/bench-data] [--repeats 3] [--cold] [--json OUT]

Expects checkpoints written by bench/make_checkpoint.py under DATA: ``f16/`` (required), ``f32/`` and ``bf16/``
(optional cases are skipped when missing). Outputs go to DATA/out/ (same filesystem as the inputs) and are deleted.

Cases (``--cases``, comma-separated, default all):
  cp          cp f16/model.ckpt out/cp.ckpt, then ``sync out/cp.ckpt`` (fsync of that file) timed separately;
              the converter fsyncs its output, so "cp + fsync" is the like-for-like baseline.
  dry         ms2gguf f16 --dry-run: the fixed cost (start-up, imports, index, plan, vocabulary, metadata).
  f16         f16 checkpoint -> --outtype f16 (most tensors raw-copied with copy_file_range).
  q8_0        f32 checkpoint -> --outtype q8_0 (every 2-D tensor converted in numpy).
  bf16        bf16 checkpoint -> --outtype f16 (every 2-D tensor converted in numpy).
  q4_k_m      f16 checkpoint -> --outtype q4_k_m (llama-quantize's preset: Q4_K / Q6_K, compiled quantizers).
  q8_0_1t, q4_k_m_1t, bf16_1t   the same with --threads 1 (the scaling from one core to all).

Each conversion runs as ``python -m gguf_out.cli CKPT llama2 OUT --outtype T --force -q`` in its own subprocess.
Wall time: time.perf_counter around the subprocess. Peak RSS, user/sys CPU and page faults: /usr/bin/time
(GNU time, ``apt-get install -y time``). While it runs, /proc/PID/status is sampled every 10 ms for the peaks of
RssAnon (heap, numpy buffers) and RssFile (pages of memory-mapped files: the checkpoint's map, shared libraries).
``other_cpu_s`` is the CPU time the rest of the machine used during the run (from /proc/stat): on a shared
machine, runs with large values were slowed by other work, which is why the minimum is reported with the median.

Before every run: outputs deleted, ``sync`` (so writeback and ext4 discard of the previous run's output do not
overlap the next run), and the input is read once (warm page cache; ``--cold`` drops the cache instead:
``sync; echo 3 > /proc/sys/vm/drop_caches``, root only).

Warm runs are "primed": just before each, the f16 checkpoint is copied to DATA/out and deleted
(benchutil.prime_memory). On this VM (virtio-balloon free page reporting) a run that allocates a lot of memory
is several times slower unless another process has just freed some: the same conversion took 1.1 s or 6.3 s
depending on what ran before it. Priming gives every run the same start; --no-prime turns it off. The case order
is also reversed every other repetition (ABBA), so use an even --repeats.

BENCH_REPO=DIR runs the converter from another source tree (e.g. a prototype fix in a scratch copy, or a
``git archive`` snapshot of a commit; BENCH_COMMIT=SHA then records which commit it is).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchutil import cached_fraction, cpu_busy, drop_caches, machine_info, prime_memory, wait_quiet

REPO = Path(os.environ.get("BENCH_REPO") or Path(__file__).resolve().parent.parent)
PY = sys.executable
CASES = {   # name -> (input dir, --outtype)
    "f16": ("f16", "f16"),
    "q8_0": ("f32", "q8_0"),
    "bf16": ("bf16", "f16"),
    "q4_k_m": ("f16", "q4_k_m"),
    "q8_0_1t": ("f32", "q8_0"),
    "q4_k_m_1t": ("f16", "q4_k_m"),
    "bf16_1t": ("bf16", "f16"),
}
EXTRA_ARGS = {"q8_0_1t": ["--threads", "1"], "q4_k_m_1t": ["--threads", "1"], "bf16_1t": ["--threads", "1"]}


def sh(*cmd):
    subprocess.run(cmd, check=True)


def settle(out_dir, src, cold):
    """Same starting state for every run: no outputs, nothing dirty, input cached (or not)."""
    for p in out_dir.iterdir():
        if p.is_file():
            p.unlink()
    sh("sync")
    note = None
    if cold:
        note = drop_caches()
    else:
        with open(src, "rb") as f:      # warm the page cache (a no-op when already cached)
            while f.read(64 << 20):
                pass
    return note


QUIET = {"max_wait": 120.0, "threshold": 0.15}
PRIME = {"on": True, "seconds": 0.0}


def _status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


def _children(pid):
    """PIDs whose parent is pid (no /proc/PID/task/PID/children on this kernel: scan /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def run_measured(cmd, cwd=None, env=None):
    """Run cmd under /usr/bin/time; returns wall seconds, its rusage numbers and sampled RSS peaks.

    Peak RSS comes from GNU time (wait4 of a child forked from the small ``time`` process). Taking wait4's
    ru_maxrss directly from this Python process would be wrong: Linux carries the RSS high-water mark of the
    forking process across exec, so every child would report at least this benchmark's own RSS.
    """
    fmt = "%e %M %U %S %R %F"
    time_out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_convert.{os.getpid()}.time"
    busy0 = cpu_busy()
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", fmt, "-o", str(time_out)] + list(cmd), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    target = None
    while proc.poll() is None:
        if target is None:
            kids = _children(proc.pid)
            target = kids[0] if kids else None
        if target is not None:
            for key, value in _status(target).items():
                peaks[key] = max(peaks[key], value)
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    busy = cpu_busy() - busy0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err}")
    elapsed, maxrss_kb, user, sys_, minflt, majflt = time_out.read_text().split()[-6:]
    time_out.unlink()
    user, sys_ = float(user), float(sys_)
    return {"wall_s": wall, "time_elapsed_s": float(elapsed), "maxrss_mb": int(maxrss_kb) / 1024, "user_s": user,
            "sys_s": sys_, "minflt": int(minflt), "majflt": int(majflt), "sampled_peak_mb": peaks,
            "other_cpu_s": max(0.0, busy - user - sys_), "stdout": out[-2000:]}


def converter_cmd(ckpt, out, outtype, dry=False, extra=()):
    cmd = [PY, "-m", "gguf_out.cli", str(ckpt), "llama2", str(out), "--outtype", outtype, "--force", "-q", *extra]
    return cmd + ["--dry-run"] if dry else cmd


def converter_env(tree):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def checkpoint_facts(ckpt):
    sys.path.insert(0, str(REPO))
    import msckpt
    with msckpt.open_checkpoint(ckpt) as c:
        tensors = list(c)
        return {"file_bytes": c.file_size, "tensor_bytes": sum(t.nbytes for t in tensors),
                "elements": sum(t.n_elements for t in tensors), "tensors": len(tensors),
                "largest_tensor_bytes": max(t.nbytes for t in tensors),
                "largest_tensor": max(tensors, key=lambda t: t.nbytes).name}


def check_output(gguf_path, ckpt, outtype):
    """Light correctness check: tensor count and types; F16->F16 token_embd bytes equal the checkpoint's."""
    from gguf import GGUFReader
    sys.path.insert(0, str(REPO))
    import msckpt
    r = GGUFReader(str(gguf_path))
    types = sorted({t.tensor_type.name for t in r.tensors})
    facts = {"gguf_bytes": Path(gguf_path).stat().st_size, "gguf_tensors": len(r.tensors), "gguf_types": types}
    if outtype == "f16":
        with msckpt.open_checkpoint(ckpt) as c:
            src = c["model.tok_embeddings.embedding_weight"]
            if src.dtype.name == "Float16":
                emb = next(t for t in r.tensors if t.name == "token_embd.weight")
                data = emb.data.reshape(-1).view("u1")
                pos = 0
                for off, n in src.byte_ranges():     # compare 1 MiB at each piece boundary
                    k = min(n, 1 << 20)
                    if bytes(data[pos:pos + k]) != bytes(src.source.view(off, k)):
                        raise SystemExit("output token_embd.weight differs from the checkpoint")
                    pos += n
                facts["token_embd_matches"] = True
    return facts


def one_run(case, data, out_dir, cold, tree=None, tag=""):
    """One measured run; conversion cases use the converter in ``tree`` (default REPO), labelled case@tag."""
    tree = tree or REPO
    if case == "cp":
        src = data / "f16" / "model.ckpt"
        waited, busy = wait_quiet(**QUIET)
        note = settle(out_dir, src, cold)
        cached = cached_fraction(src)
        dst = out_dir / "cp.ckpt"
        PRIME["seconds"] = prime_memory(src, out_dir / "prime.tmp") if PRIME["on"] and not cold else 0.0
        r = run_measured(["cp", str(src), str(dst)])
        t0 = time.perf_counter()
        sh("sync", str(dst))
        r["fsync_s"] = time.perf_counter() - t0
        r["cp_plus_fsync_s"] = r["wall_s"] + r["fsync_s"]
    else:
        dir_name, outtype = ("f16", "f16") if case == "dry" else CASES[case]
        src = data / dir_name / "model.ckpt"
        waited, busy = wait_quiet(**QUIET)
        note = settle(out_dir, src, cold)
        cached = cached_fraction(src)
        out = out_dir / f"{case}.gguf"
        PRIME["seconds"] = (prime_memory(data / "f16" / "model.ckpt", out_dir / "prime.tmp")
                            if PRIME["on"] and not cold else 0.0)
        r = run_measured(converter_cmd(src, out, outtype, dry=case == "dry", extra=EXTRA_ARGS.get(case, ())),
                         cwd=tree, env=converter_env(tree))
        if case != "dry":
            r["output"] = check_output(out, src, outtype)
    r.update(case=f"{case}@{tag}" if tag and case != "cp" else case, tree=str(tree), cold=cold,
             prime_s=PRIME["seconds"],
             cached_before=cached, quiet_wait_s=waited, busy_before=busy)
    if note:
        r["drop_caches_error"] = note
    return r


def summarize(runs, facts):
    rows = {}
    for case in dict.fromkeys(r["case"] for r in runs):
        rs = [r for r in runs if r["case"] == case]
        walls = [r["wall_s"] for r in rs]
        row = {"case": case, "runs": len(rs), "wall_s": walls, "wall_median_s": statistics.median(walls),
               "wall_min_s": min(walls), "other_cpu_s": [r["other_cpu_s"] for r in rs],
               "maxrss_mb": max(r["maxrss_mb"] for r in rs),
               "peak_anon_mb": max(r["sampled_peak_mb"]["RssAnon"] for r in rs),
               "peak_file_mb": max(r["sampled_peak_mb"]["RssFile"] for r in rs),
               "user_s": statistics.median(r["user_s"] for r in rs), "sys_s": statistics.median(r["sys_s"] for r in rs)}
        if case == "cp":
            row["fsync_s"] = [r["fsync_s"] for r in rs]
            row["cp_plus_fsync_median_s"] = statistics.median(r["cp_plus_fsync_s"] for r in rs)
            row["cp_plus_fsync_min_s"] = min(r["cp_plus_fsync_s"] for r in rs)
        base = case.split("@")[0]
        key = {"cp": "f16", "dry": "f16"}.get(base, CASES.get(base, (None,))[0])
        f = facts.get(key)
        if f and base != "dry":
            row["input_MBps"] = f["tensor_bytes"] / row["wall_median_s"] / 1e6
            row["Melem_per_s"] = f["elements"] / row["wall_median_s"] / 1e6
        rows[case] = row
    cp = rows.get("cp")
    if cp:
        for row in rows.values():
            row["x_cp"] = row["wall_median_s"] / cp["wall_median_s"]
            row["x_cp_fsync"] = row["wall_median_s"] / cp["cp_plus_fsync_median_s"]
            row["x_cp_min"] = row["wall_min_s"] / cp["wall_min_s"]
            row["x_cp_fsync_min"] = row["wall_min_s"] / cp["cp_plus_fsync_min_s"]
    return list(rows.values())


def print_table(title, rows, facts):
    print(f"\n{title}")
    print("ratios: median/median (min/min); 'others' = CPU seconds used by other processes during each run")
    print(f"{'case':18s} {'wall s per run':>26s} {'others cpu s':>20s} {'median':>6s} {'x cp':>11s} "
          f"{'x cp+fsync':>11s} {'in MB/s':>7s} {'Melem/s':>7s} {'RSS MB':>7s} {'anon/file':>10s} {'user/sys s':>11s}")
    for r in rows:
        walls = " ".join(f"{w:.2f}" for w in r["wall_s"])
        others = " ".join(f"{w:.1f}" for w in r["other_cpu_s"])
        extra = (f"\n      cp + fsync: {' '.join(f'{w + f:.2f}' for w, f in zip(r['wall_s'], r['fsync_s']))} s"
                 if r["case"] == "cp" else "")
        print(f"{r['case']:18s} {walls:>26s} {others:>20s} {r['wall_median_s']:6.2f} "
              f"{r.get('x_cp', float('nan')):5.2f}({r.get('x_cp_min', float('nan')):4.2f}) "
              f"{r.get('x_cp_fsync', float('nan')):5.2f}({r.get('x_cp_fsync_min', float('nan')):4.2f}) "
              f"{r.get('input_MBps', float('nan')):7.0f} {r.get('Melem_per_s', float('nan')):7.1f} "
              f"{r['maxrss_mb']:7.1f} {r['peak_anon_mb']:4.0f}/{r['peak_file_mb']:<5.0f} "
              f"{r['user_s']:5.2f}/{r['sys_s']:<5.2f}{extra}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/bench-data", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default="cp,dry,f16,q8_0,bf16")
    p.add_argument("--cold", action="store_true", help="also run cp and f16 with the page cache dropped")
    p.add_argument("--json", help="write all raw results here")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="A/B comparison: run every conversion case with the converter of each tree, interleaved "
                   "in the same session (e.g. --tree head=/snap --tree fix=/scratch/fix); default: BENCH_REPO")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="before each run, wait up to this many seconds "
                   "for the machine to be idle (< --quiet-threshold busy for 1 s) (default: %(default)s)")
    p.add_argument("--quiet-threshold", type=float, default=0.15)
    p.add_argument("--no-prime", dest="prime", action="store_false", help="do not copy+delete the f16 checkpoint "
                   "before each warm run (benchutil.prime_memory: without it, this VM's timings depend on what ran "
                   "before)")
    a = p.parse_args(argv)
    PRIME["on"] = a.prime
    QUIET.update(max_wait=a.quiet_wait, threshold=a.quiet_threshold)

    out_dir = a.data / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in a.cases.split(",") if c]
    facts = {}
    for name in ("f16", "f32", "bf16"):
        ckpt = a.data / name / "model.ckpt"
        if ckpt.exists():
            facts[name] = checkpoint_facts(ckpt)
    cases = [c for c in cases if c in ("cp", "dry") and "f16" in facts or c in CASES and CASES[c][0] in facts]
    rev = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "repo": str(REPO), "commit": rev or None,
              "machine": machine_info(str(a.data)), "inputs": facts, "cases": cases}
    for name, f in facts.items():
        print(f"{name}: {f['file_bytes']:,} bytes, {f['tensors']} tensors, {f['elements']:,} elements, largest "
              f"{f['largest_tensor']} {f['largest_tensor_bytes'] / 1e6:.0f} MB")

    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1])) for t in a.tree] or [("", REPO)]
    report["trees"] = {name: str(path) for name, path in trees}
    plan = [(case, None, "") if case == "cp" else (case, path, name) for case in cases
            for name, path in (trees if case != "cp" else trees[:1])]
    warm = []
    for rep in range(a.repeats):
        # ABBA order: every other repetition runs the plan backwards, so what ran before a case (which matters
        # on this VM, see benchutil.prime_memory) is balanced over an even number of repeats.
        for case, tree, tag in (plan if rep % 2 == 0 else plan[::-1]):
            warm.append(one_run(case, a.data, out_dir, cold=False, tree=tree, tag=tag))
    report["warm"] = warm
    report["warm_summary"] = summarize(warm, facts)
    print_table(f"warm page cache, {a.repeats} runs each (interleaved), converter from "
                f"{', '.join(f'{n}={p}' if n else str(p) for n, p in trees)}",
                report["warm_summary"], facts)

    if a.cold:
        cold = []
        cold_plan = [x for x in plan if x[0] in ("cp", "f16")]
        for rep in range(a.repeats):
            for case, tree, tag in (cold_plan if rep % 2 == 0 else cold_plan[::-1]):
                cold.append(one_run(case, a.data, out_dir, cold=True, tree=tree, tag=tag))
        errors = {r["drop_caches_error"] for r in cold if "drop_caches_error" in r}
        report["cold"] = cold
        report["cold_summary"] = summarize(cold, facts)
        if errors:
            print(f"\ncold cache NOT available: {'; '.join(errors)}")
            report["cold_error"] = sorted(errors)
        print_table("cold page cache (drop_caches before every run)", report["cold_summary"], facts)

    for p_ in out_dir.iterdir():
        if p_.is_file():
            p_.unlink()
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"\nraw results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
