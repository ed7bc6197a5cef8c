"""``ms2gguf bulk JOBS``: local worker processes and a real Dask distributed cluster (a scheduler and two worker
processes started here on localhost); outputs byte-identical to single conversions, bad jobs reported with their
one-line error, reruns skip what is complete and redo only the missing parts of a split job."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import LLAMA, TOKENIZER, convert

from gguf_out.cli import main

GQA = LLAMA / "gqa_fused" / "model.ckpt"
K256 = LLAMA / "k256" / "model.ckpt"
MHA = LLAMA / "mha" / "model.ckpt"


def _jobs(tmp_path):
    """A split job with two outtypes, a q4_k_m job, a job with an unknown key and a job whose conversion fails;
    the checkpoints and tokenizer named relative to the JOBS file's folder."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    rel = lambda p: os.path.relpath(p, folder)      # noqa: E731
    jobs = [
        {"ckpt": rel(GQA), "map": "llama2", "out": "out/gqa-{ftype}.gguf", "tokenizer": rel(TOKENIZER),
         "outtype": ["f16", "q8_0"], "split_max_tensors": 8, "modelfile": True},
        {"ckpt": rel(K256), "out": "out/k256.gguf", "tokenizer": rel(TOKENIZER), "outtype": "q4_k_m",
         "threads": 1},
        {"ckpt": rel(MHA), "map": "llama2", "out": "out/typo.gguf", "outtyp": "q8_0"},
        {"ckpt": rel(MHA), "map": "llama2", "out": "out/notok.gguf", "tokenizer": "missing/tokenizer.model"},
    ]
    path = folder / "jobs.yaml"
    import yaml
    path.write_text(yaml.safe_dump(jobs, sort_keys=False))
    return path


def _single(tmp_path):
    """The same outputs from single conversions."""
    ref = tmp_path / "ref"
    ref.mkdir()
    assert convert(GQA, ref / "gqa-{ftype}.gguf", "--outtype", "f16,q8_0", "--split-max-tensors", "8",
                   "--modelfile") == 0
    assert convert(K256, ref / "k256.gguf", "--outtype", "q4_k_m") == 0
    return ref


def _bulk(capsys, *argv):
    status = main(["bulk", *map(str, argv), "--json"])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


def _check_first_run(tmp_path, status, report, err):
    assert status == 1
    by_job = {j["job"]: j for j in report["jobs"]}
    assert [by_job[i]["status"] for i in (1, 2, 3, 4)] == ["ok", "ok", "failed", "failed"]
    assert (report["ok"], report["skipped"], report["failed"]) == (2, 0, 2)
    assert by_job[3]["error"].startswith("unknown key 'outtyp' (a job takes ckpt, map, out")
    assert by_job[4]["error"] == (f"{tmp_path}/jobs/missing/tokenizer.model: cannot read the tokenizer "
                                  "(No such file or directory)") or "missing/tokenizer.model" in by_job[4]["error"]
    assert "\n" not in by_job[4]["error"] and "Traceback" not in err
    assert "[3/4] job 3 (out/typo.gguf): failed: unknown key 'outtyp'" in err
    out = tmp_path / "jobs" / "out"
    ref = _single(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for p in ref.glob("*.gguf"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    for p in ref.glob("*.Modelfile"):      # the same but for the tokenizer's path in a comment
        strip = lambda text: [line for line in text.splitlines() if not line.startswith("# chat format")]  # noqa
        assert strip((out / p.name).read_text()) == strip(p.read_text())
    assert len(by_job[1]["files"]) == 6 and by_job[1]["bytes"] == sum(
        p.stat().st_size for p in out.glob("gqa-*.gguf"))
    return out


def test_bulk_on_local_workers(tmp_path, capsys):
    jobs = _jobs(tmp_path)
    status, report, err = _bulk(capsys, jobs, "--workers", "2")
    out = _check_first_run(tmp_path, status, report, err)
    assert "ms2gguf bulk: 4 jobs on 2 local worker processes" in err
    # a rerun skips every complete job
    status, report, err = _bulk(capsys, jobs, "--workers", "2")
    assert [j["status"] for j in report["jobs"]] == ["skipped", "skipped", "failed", "failed"] and status == 1
    # after a crash that lost two parts, only those are written again, and only for the types that lack them
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "gqa-Q8_0-00002-of-00003.gguf").unlink()
    (out / "gqa-F16-00003-of-00003.gguf").unlink()
    status, report, err = _bulk(capsys, jobs, "--workers", "2")
    assert "job 1 (out/gqa-{ftype}.gguf): converting 2 of 3 parts (2, 3)" in err
    assert report["jobs"][0]["status"] == "ok" and report["jobs"][1]["status"] == "skipped"
    assert report["jobs"][0]["bytes"] == len(before["gqa-Q8_0-00002-of-00003.gguf"]) + len(
        before["gqa-F16-00003-of-00003.gguf"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --force redoes everything
    status, report, err = _bulk(capsys, jobs, "--workers", "1", "--force")
    assert [j["status"] for j in report["jobs"]][:2] == ["ok", "ok"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_file_that_fails_its_check_fails_the_job_unless_forced(tmp_path, capsys):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"ckpt": str(MHA), "map": "llama2", "out": "m.gguf", "tokenizer": str(TOKENIZER)}]))
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    status, report, _ = _bulk(capsys, jobs, "--workers", "1")
    assert status == 1 and report["jobs"][0]["error"].startswith(
        f"{tmp_path}/m.gguf exists but fails 'ms2gguf check': truncated")
    status, report, _ = _bulk(capsys, jobs, "--workers", "1", "--force")
    assert status == 0 and report["jobs"][0]["status"] == "ok"
    ref = tmp_path / "ref.gguf"
    assert convert(MHA, ref) == 0 and (tmp_path / "m.gguf").read_bytes() == ref.read_bytes()


def test_a_split_set_that_fails_together_is_not_complete(tmp_path, capsys):
    """Each split passes alone, but one comes from another model: the job is not skipped."""
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"ckpt": str(GQA), "map": "llama2", "out": "m.gguf", "tokenizer": str(TOKENIZER),
                                 "split_max_tensors": 8}]))
    assert _bulk(capsys, jobs, "--workers", "1")[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    assert convert(MHA, other / "m.gguf", "--split-max-tensors", "8") == 0
    (tmp_path / "m-00002-of-00003.gguf").write_bytes((other / "m-00002-of-00003.gguf").read_bytes())
    status, report, _ = _bulk(capsys, jobs, "--workers", "1")
    assert status == 1 and "m-00001-of-00003.gguf: " in report["jobs"][0]["error"]
    assert report["jobs"][0]["error"].endswith("(force: true, or --force, rewrites it)")


@pytest.mark.parametrize("text,error", [
    ("{ckpt: a}", "expected a list of jobs"),
    ("- [unclosed", "not valid YAML"),
])
def test_bad_jobs_files_are_one_line_errors(tmp_path, capsys, text, error):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(text)
    assert main(["bulk", str(jobs)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ms2gguf: error: {jobs}: {error}") and err.count("\n") == 1


def test_refused_job_keys(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"- {{ckpt: {MHA}, out: m.gguf, split_part: 2}}\n- {{ckpt: {MHA}, out: m.gguf, force: maybe}}\n"
                    f"- {{out: m.gguf}}\n")
    status, report, _ = _bulk(capsys, jobs)
    assert status == 1
    assert [j["error"] for j in report["jobs"]] == [
        "'split_part' cannot be given to bulk: bulk writes the parts of a split job itself",
        "option 'force' is a flag: give true or false, not 'maybe'", "'ckpt' is missing"]


# --- a real Dask cluster on localhost -------------------------------------------------------------------------

@pytest.fixture
def dask_scheduler(tmp_path):
    pytest.importorskip("distributed", reason="the test extra installs dask[distributed]")
    from distributed import Client

    info = tmp_path / "scheduler.json"
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "workers.log")]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 120
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, "the scheduler did not start"
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
                                       "2", "--nthreads", "1", "--no-dashboard", "--memory-limit", "0"],
                                      stdout=logs[1], stderr=subprocess.STDOUT, cwd=tmp_path))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def test_bulk_on_a_dask_cluster(tmp_path, capsys, dask_scheduler):
    jobs = _jobs(tmp_path)
    status, report, err = _bulk(capsys, jobs, "--scheduler", dask_scheduler)
    assert f"ms2gguf bulk: 4 jobs on Dask scheduler {dask_scheduler} (2 workers, 2 threads)" in err
    _check_first_run(tmp_path, status, report, err)
    status, report, err = _bulk(capsys, jobs, "--scheduler", dask_scheduler)
    assert [j["status"] for j in report["jobs"]] == ["skipped", "skipped", "failed", "failed"]


def test_bad_scheduler_address(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from gguf_out import bulk

    monkeypatch.setattr(bulk, "CONNECT_TIMEOUT", 2)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"- {{ckpt: {MHA}, out: m.gguf}}\n")
    assert main(["bulk", str(jobs), "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "ms2gguf: error: --scheduler tcp://127.0.0.1:1: cannot connect" in capsys.readouterr().err


def test_worker_options(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"- {{ckpt: {MHA}, out: m.gguf}}\n")
    assert main(["bulk", str(jobs), "--workers", "0"]) == 1
    assert "ms2gguf: error: --workers 0: must be at least 1" in capsys.readouterr().err
    assert main(["bulk", str(jobs), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "--workers is for local workers; a Dask cluster has its own" in capsys.readouterr().err


def test_two_jobs_writing_the_same_file(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"- {{ckpt: {MHA}, map: llama2, out: m.gguf, tokenizer: {TOKENIZER}}}\n"
                    f"- {{ckpt: {MHA}, map: llama2, out: m.gguf, tokenizer: {TOKENIZER}, outtype: q8_0}}\n")
    status, report, _ = _bulk(capsys, jobs, "--workers", "1")
    assert status == 1 and sorted(j["status"] for j in report["jobs"]) == ["failed", "ok"]
    failed = next(j for j in report["jobs"] if j["status"] == "failed")
    other = 3 - failed["job"]
    assert failed["error"] == f"{tmp_path}/m.gguf is also a file of job {other}"
