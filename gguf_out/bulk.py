"""``ms2gguf bulk JOBS``: many conversions in parallel, on local worker processes or a Dask cluster.

JOBS is a YAML or JSON list of jobs, each ``{ckpt, map, out, ...}`` with any conversion option by its long name
with underscores. Every job is planned first (a task that reads only headers: which files it makes, and which of
them already exist and pass ``ms2gguf check``); a complete job is skipped unless forced; otherwise its missing
files are written: one task for a whole-file job (all its outtypes from one read), or one task per missing part of
a split job (``--split-part K``), then one task checking the finished set. Tasks are plain functions of this
module, so any executor runs them: a ``concurrent.futures`` process pool, or ``distributed.Client``.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import ConvertError

CONNECT_TIMEOUT = 30        # seconds to reach the Dask scheduler
PATH_KEYS = ("ckpt", "out", "config", "tokenizer", "strategy", "tmp_dir")
REFUSED = {
    "split_part": "bulk writes the parts of a split job itself",
    "dry_run": "a job always writes",
    "ollama": "run 'ollama create' with the Modelfile after the job (the Ollama server is per machine)",
    "quiet": "bulk reports the progress",
    "verbose": "bulk reports the progress",
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="ms2gguf bulk", description="Run many conversions in parallel: local worker processes, or a running "
        "Dask distributed cluster (--scheduler). JOBS is a YAML or JSON list of jobs {ckpt, map, out, ...} with "
        "any conversion option by its long name with underscores (outtype, config, tokenizer, split_max_size, "
        "...); paths are relative to the JOBS file's folder and must be the same on every worker (a shared "
        "filesystem). Complete jobs (every planned file exists and passes 'ms2gguf check') are skipped.")
    p.add_argument("jobs", metavar="JOBS", help="YAML or JSON file: a list of jobs")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: the number of cores; each job then gets "
                   "max(1, cores // N) threads)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the jobs on this Dask distributed scheduler, e.g. "
                   "tcp://HOST:8786 (needs 'pip install ms2gguf[dask]' here and on the workers)")
    p.add_argument("--force", action="store_true", help="rerun complete jobs and overwrite their files")
    p.add_argument("--json", action="store_true", help="print one JSON report (per job: status, files, seconds, "
                   "bytes, error) on stdout")
    return p


class Job:
    def __init__(self, index, spec, base):
        self.index, self.spec, self.base = index, spec, base
        self.options = None                  # the keyword arguments of gguf_out.api.convert
        self.status = None                   # ok / skipped / failed
        self.error = None
        self.files = []
        self.bytes = 0
        self.started = None
        self.seconds = 0.0
        self.pending = 0                     # tasks out
        self.errors = []                     # (part, error line) of finished tasks
        self.split = False

    @property
    def name(self):
        out = self.spec.get("out") if isinstance(self.spec, dict) else None
        return f"job {self.index} ({out})" if out else f"job {self.index}"

    def report(self):
        return {"job": self.index, "ckpt": self.options.get("ckpt") if self.options else None,
                "out": self.options.get("out") if self.options else None, "status": self.status,
                "files": [str(f) for f in self.files], "seconds": round(self.seconds, 3), "bytes": self.bytes,
                "error": self.error}


def load_jobs(path):
    """The jobs of a JOBS file; a problem with one job fails that job, a problem with the file is an error."""
    from msckpt import safeio

    path = Path(path)
    text = safeio.read_text(path, ConvertError, "jobs file")      # a regular file of bounded size, strict JSON,
    if path.suffix == ".json":                                    # bounded nesting and YAML aliases
        data = safeio.parse_json(text, path, ConvertError)
    else:
        data = safeio.parse_yaml(text, path, ConvertError)
    if isinstance(data, dict) and list(data) == ["jobs"]:
        data = data["jobs"]
    if not isinstance(data, list) or not data:
        raise ConvertError(f"{path}: expected a list of jobs ({{ckpt, map, out, ...}} each)")
    base = path.resolve().parent
    return [Job(i, spec, base) for i, spec in enumerate(data, start=1)]


def job_options(spec, base):
    """The keyword arguments of ``gguf_out.api.convert`` for one job, paths made absolute; ConvertError for a
    job that cannot run (not a mapping, a missing or unknown key, a value the option does not take)."""
    from . import api, templates

    if not isinstance(spec, dict):
        raise ConvertError(f"a job is a mapping {{ckpt, map, out, ...}}, not {type(spec).__name__}")
    for key in ("ckpt", "out"):
        if not spec.get(key):
            raise ConvertError(f"'{key}' is missing")
    opts = {}
    known = api.options()
    for key, value in spec.items():
        key = str(key)
        if key in REFUSED:
            raise ConvertError(f"'{key}' cannot be given to bulk: {REFUSED[key]}")
        if key not in known and key not in ("ckpt", "out", "map"):
            raise ConvertError(f"unknown key '{key}' (a job takes ckpt, map, out and the conversion options by "
                               "their long names with underscores)")
        if key in PATH_KEYS and value is not None:
            value = str(base / os.path.expanduser(str(value)))
        if key == "chat_template" and isinstance(value, str) and value not in templates.FORMATS \
                and value not in templates.ALIASES and value != "none":
            value = str(base / value)
        opts[key] = value
    opts.setdefault("map", "auto")
    api.argv(**opts)                    # raises for unknown options and values of the wrong kind
    parser = api._parser()
    parser.parse_args(api.argv(parser=parser, **opts))      # and for values the option rejects
    return opts


# ---------------------------------------------------------------------------------------------------------------
# tasks: run on a worker; each returns a plain dict and never raises (the error is its one line)

def _error_line(err):
    if isinstance(err, ConvertError):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or [type(err).__name__])[0]


def _worker_threads():
    """A Dask worker's thread count, else the cores."""
    try:
        from distributed import get_worker
        worker = get_worker()
        return max(1, int(getattr(worker, "state", worker).nthreads))
    except (ImportError, ValueError, AttributeError):
        return os.cpu_count() or 1


def _state(paths):
    """{path: "ok" | "missing" | problem} of a planned output (one file or a split set, in split order)."""
    from . import check

    state = {}
    for k, path in enumerate(paths):
        if not os.path.exists(path):
            state[str(path)] = "missing"
            continue
        report = check.check_part(path, k, len(paths)) if len(paths) > 1 else check.check_file(path)
        state[str(path)] = report.errors[0].text if report.errors else "ok"
    return state


def task_plan(options):
    """The files of a job per outtype, and the state of each."""
    from . import api

    try:
        result = api.plan(**options)
        outputs = {t: [str(p) for p in paths] for t, paths in result.outputs.items()}
        return {"outputs": outputs, "state": {t: _state(paths) for t, paths in outputs.items()}, "error": None}
    except Exception as err:            # noqa: BLE001 - the job fails with this line, the others go on
        return {"error": _error_line(err)}


def task_convert(options):
    """One conversion (a whole output, or one part of split sets)."""
    from . import api

    started = time.monotonic()
    options = dict(options)
    if options.get("threads") is None:
        options["threads"] = _worker_threads()
    try:
        Path(options["out"]).parent.mkdir(parents=True, exist_ok=True)
        result = api.convert(**options)
        return {"written": [str(p) for p in result.written], "bytes": result.bytes,
                "seconds": time.monotonic() - started, "error": None}
    except Exception as err:            # noqa: BLE001
        return {"error": _error_line(err), "seconds": time.monotonic() - started}


def task_verify(firsts):
    """'ms2gguf check' of each finished split set, given its first file: the first error line, or None."""
    from . import check

    for path in firsts:
        report = check.check_file(path)
        if report.errors:
            return {"error": f"{path}: {report.errors[0].text}"}
    return {"error": None}


# ---------------------------------------------------------------------------------------------------------------
# executors

class LocalPool:
    """Worker processes on this machine (spawned, so nothing of the parent's threads is inherited)."""

    def __init__(self, workers):
        import concurrent.futures
        import multiprocessing

        self.futures = concurrent.futures
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                           mp_context=multiprocessing.get_context("spawn"))
        self.where = f"{workers} local worker process{'es' if workers > 1 else ''}"

    def submit(self, fn, arg):
        return self.pool.submit(fn, arg)

    def wait_any(self, futures):
        return self.futures.wait(futures, return_when=self.futures.FIRST_COMPLETED).done

    def close(self):
        self.pool.shutdown(cancel_futures=True)


class DaskPool:
    """A running Dask distributed cluster."""

    def __init__(self, address):
        try:
            import distributed
        except ImportError:
            raise ConvertError("--scheduler needs Dask distributed: pip install 'ms2gguf[dask]'") from None
        self.distributed = distributed
        try:
            self.client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as err:
            raise ConvertError(f"--scheduler {address}: cannot connect ({_error_line(err)})") from None
        workers = self.client.scheduler_info().get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        self.where = f"Dask scheduler {address} ({len(workers)} workers, {threads} threads)"

    def submit(self, fn, arg):
        return self.client.submit(fn, arg, pure=False)

    def wait_any(self, futures):
        return self.distributed.wait(futures, return_when="FIRST_COMPLETED").done

    def close(self):
        self.client.close()


# ---------------------------------------------------------------------------------------------------------------
# the driver

class Progress:
    """A line per job state on stderr; on a terminal also a bar of finished jobs."""

    def __init__(self, total):
        self.total = total
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="job", desc="bulk", file=sys.stderr, leave=False)

    def line(self, job, text, finished=False):
        message = f"ms2gguf bulk: [{job.index}/{self.total}] {job.name}: {text}"
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
            if finished:
                self.bar.update(1)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Runner:
    def __init__(self, jobs, pool, force, default_threads, progress):
        self.jobs, self.pool, self.force, self.progress = jobs, pool, force, progress
        self.default_threads = default_threads
        self.pending = {}
        self.owners = {}                    # planned file -> the job that writes it

    def submit(self, job, fn, arg, what):
        job.pending += 1
        self.pending[self.pool.submit(fn, arg)] = (job, what)

    def run(self):
        for job in self.jobs:
            job.started = time.monotonic()
            try:
                job.options = job_options(job.spec, job.base)
                job.force = self.force or bool(job.options.pop("force", False))
            except ConvertError as err:
                self.finish(job, "failed", str(err))
                continue
            self.submit(job, task_plan, dict(job.options), "plan")
        while self.pending:
            for future in self.pool.wait_any(list(self.pending)):
                job, what = self.pending.pop(future)
                job.pending -= 1
                try:
                    result = future.result()
                except Exception as err:        # noqa: BLE001 - a worker lost, a task not deserialisable, ...
                    result = {"error": _error_line(err)}
                self.handle(job, what, result)

    def finish(self, job, status, error=None):
        job.status, job.error = status, error
        job.seconds = time.monotonic() - job.started
        text = {"ok": f"ok, {len(job.files)} file{'s' if len(job.files) != 1 else ''}, {job.bytes:,} bytes, "
                      f"{job.seconds:.1f} s",
                "skipped": f"skipped: complete ({len(job.files)} file{'s' if len(job.files) != 1 else ''})",
                "failed": f"failed: {error}"}[status]
        self.progress.line(job, text, finished=True)

    def handle(self, job, what, result):
        if what == "plan":
            return self.planned(job, result)
        if what == "complete?":
            if result["error"]:
                return self.finish(job, "failed", f"{result['error']} (force: true, or --force, rewrites it)")
            return self.finish(job, "skipped")
        if what == "verify":
            if result["error"]:
                return self.finish(job, "failed", result["error"])
            return self.finish(job, "ok")
        # a conversion task
        if result.get("error"):
            job.errors.append((what, result["error"]))
        else:
            job.bytes += result["bytes"]
        if job.pending:
            return None
        if job.errors:
            part, error = min(job.errors, key=lambda e: str(e[0]).zfill(8))
            more = f" (and {len(job.errors) - 1} more failed parts)" if len(job.errors) > 1 else ""
            return self.finish(job, "failed", (f"part {part}: " if part else "") + error + more)
        if job.split:
            self.submit(job, task_verify, [paths[0] for paths in job.outputs.values() if len(paths) > 1], "verify")
            return None
        return self.finish(job, "ok")

    def planned(self, job, result):
        if result["error"]:
            return self.finish(job, "failed", result["error"])
        job.outputs = result["outputs"]
        job.files = [p for paths in job.outputs.values() for p in paths]
        clash = next((p for p in job.files if p in self.owners), None)
        if clash is not None:
            return self.finish(job, "failed", f"{clash} is also a file of job {self.owners[clash]}")
        self.owners.update((p, job.index) for p in job.files)
        state = {p: s for per_type in result["state"].values() for p, s in per_type.items()}
        if not job.force:
            bad = [(p, s) for p, s in state.items() if s not in ("ok", "missing")]
            if bad:
                path, problem = bad[0]
                return self.finish(job, "failed", f"{path} exists but fails 'ms2gguf check': {problem} "
                                                  "(force: true, or --force, rewrites it)")
            if all(s == "ok" for s in state.values()):
                firsts = [paths[0] for paths in job.outputs.values() if len(paths) > 1]
                if firsts:          # each split passed alone; the sets must pass together
                    self.submit(job, task_verify, firsts, "complete?")
                    return None
                return self.finish(job, "skipped")
        options = dict(job.options)
        options["force"] = job.force
        if options.get("threads") is None and self.default_threads is not None:
            options["threads"] = self.default_threads
        job.split = any(len(paths) > 1 for paths in job.outputs.values())
        todo = lambda paths, k: job.force or state[paths[k]] == "missing"      # noqa: E731
        if not job.split:
            types = [t for t, paths in job.outputs.items() if todo(paths, 0)]
            self.submit(job, task_convert, dict(options, outtype=types), "")
            self.progress.line(job, f"converting {', '.join(types)}")
            return None
        most = max(len(paths) for paths in job.outputs.values())
        parts = []
        for k in range(most):
            types = [t for t, paths in job.outputs.items() if len(paths) > k and todo(paths, k)]
            if not types:
                continue
            part = dict(options, outtype=types, split_part=k + 1)
            if k > 0:       # the Modelfile comes with part 1
                part.update(modelfile=False, system=None)
            self.submit(job, task_convert, part, k + 1)
            parts.append(k + 1)
        if not parts:       # every part is there; only the set's check failed: forced reruns come here too
            self.submit(job, task_verify, [paths[0] for paths in job.outputs.values() if len(paths) > 1], "verify")
            return None
        self.progress.line(job, f"converting {len(parts)} of {most} parts ({', '.join(map(str, parts))})")
        return None


def main(argv):
    args = build_parser().parse_args(argv)
    jobs = load_jobs(args.jobs)
    cores = os.cpu_count() or 1
    if args.scheduler:
        if args.workers is not None:
            raise ConvertError("--workers is for local workers; a Dask cluster has its own")
        pool = DaskPool(args.scheduler)
        default_threads = None           # the worker's thread count (task_convert)
    else:
        # one-thread processes use the cores better than threads in one process (the K-quants: bench/RESULTS.md)
        workers = args.workers if args.workers is not None else cores
        if workers < 1:
            raise ConvertError(f"--workers {workers}: must be at least 1")
        pool = LocalPool(workers)
        default_threads = max(1, cores // workers)
    progress = Progress(len(jobs))
    print(f"ms2gguf bulk: {len(jobs)} job{'s' if len(jobs) > 1 else ''} on {pool.where}", file=sys.stderr)
    try:
        Runner(jobs, pool, args.force, default_threads, progress).run()
    finally:
        progress.close()
        pool.close()
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "skipped", "failed")}
    print(f"ms2gguf bulk: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed",
          file=sys.stderr)
    if args.json:
        print(json.dumps({"jobs": [j.report() for j in jobs], **counts}, indent=1))
    return 1 if counts["failed"] else 0
