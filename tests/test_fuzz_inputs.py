"""Fuzzing every other input format (issue 18): configs, tokenizers, tokenizer_config.json, strategies, Checkpoint 2.0
metadata, maps and GGUF files given to ``check``, with the byte mutations of test_fuzz.py.

Loading a damaged file may succeed or raise the project's error (ConvertError / CheckpointError) with a one-line
message naming the file; anything else is a bug. ``check`` never raises: it reports. Each case must finish well under
a second (a hang guard, not a benchmark). Deterministic: a seeded generator per target.
"""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from msckpt import CheckpointError, open_checkpoint  # noqa: E402
from test_fuzz import mutate  # noqa: E402

from gguf_out import check, hparams, maps, vocab, vocab_bpe  # noqa: E402
from gguf_out.errors import ConvertError  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
MAX_CASE_SECONDS = 1.0


def _config(path):
    config = hparams.read_config(path)
    hparams.resolve(maps.load_map("llama2" if path.suffix == ".yaml" else "qwen3"), config, path)


def _strategy(path):
    from msckpt.strategy import load_strategy
    load_strategy(path)


def _ckpt2(path):
    with open_checkpoint(path.parent.parent) as ckpt:
        for t in ckpt:
            if t.kind == "tensor":
                t.array()


# (name, source file, file name in the case directory, other files copied beside it, loader)
TARGETS = [
    ("config-yaml", FIX / "llama" / "gqa_fused" / "config.yaml", "config.yaml", [], _config, 300),
    ("config-json", FIX / "qwen3" / "tied" / "config.json", "config.json", [], _config, 300),
    ("sentencepiece", FIX / "llama" / "tokenizer" / "tokenizer.model", "tokenizer.model", [],
     lambda p: vocab.load_sentencepiece(p), 300),
    ("tokenizer-json", FIX / "bpe" / "qwen2" / "hf" / "tokenizer.json", "tokenizer.json", [],
     lambda p: vocab_bpe.load_bpe(p), 300),
    ("tokenizer-config", FIX / "bpe" / "qwen2" / "hf" / "tokenizer_config.json", "tokenizer_config.json",
     [FIX / "bpe" / "qwen2" / "hf" / "tokenizer.json"], lambda p: vocab_bpe.load_bpe(p.with_name("tokenizer.json")),
     300),
    ("vocab-json", FIX / "bpe" / "qwen2" / "vocab" / "vocab.json", "vocab.json",
     [FIX / "bpe" / "qwen2" / "vocab" / "merges.txt"], lambda p: vocab_bpe.load_bpe(p), 300),
    ("merges-txt", FIX / "bpe" / "qwen2" / "vocab" / "merges.txt", "merges.txt",
     [FIX / "bpe" / "qwen2" / "vocab" / "vocab.json"], lambda p: vocab_bpe.load_bpe(p.with_name("vocab.json")), 300),
    ("tiktoken", FIX / "bpe" / "qwen2" / "tiktoken" / "qwen.tiktoken", "qwen.tiktoken", [],
     lambda p: vocab_bpe.load_bpe(p), 300),
    ("strategy-protobuf", FIX / "dist" / "strategy.ckpt", "strategy.ckpt", [], _strategy, 300),
    ("strategy-json", FIX / "dist" / "strategy.json", "strategy.json", [], _strategy, 300),
    ("map", ROOT / "maps" / "llama2.json", "llama2.json", [], lambda p: maps.load_map(p), 300),
]


def _run(loader, path):
    try:
        loader(path)
        return "ok"
    except (ConvertError, CheckpointError) as err:
        return err


@pytest.mark.parametrize("index,name,source,file_name,extra,loader,cases", [(i, *t) for i, t in enumerate(TARGETS)],
                         ids=[t[0] for t in TARGETS])
def test_fuzz_input(tmp_path, index, name, source, file_name, extra, loader, cases):
    for other in extra:
        shutil.copy(other, tmp_path / other.name)
    path = tmp_path / file_name
    original = source.read_bytes()
    rng = np.random.default_rng(31000 + index)
    outcomes = {"ok": 0, "error": 0}
    slowest = (0.0, None)
    for case in range(cases):
        data, what = mutate(original, rng)
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            result = _run(loader, path)
        except Exception as err:     # noqa: BLE001 -- anything else is a bug; say how to reproduce it
            pytest.fail(f"{name} case {case} ({what}; seed {31000 + index}): {type(err).__name__}: {err}")
        elapsed = time.perf_counter() - start
        if result == "ok":
            outcomes["ok"] += 1
        else:
            assert "\n" not in str(result), (what, str(result))
            assert str(tmp_path) in str(result), (what, str(result))      # names the file (or one beside it)
            outcomes["error"] += 1
        slowest = max(slowest, (elapsed, what), key=lambda s: s[0])
    assert slowest[0] < MAX_CASE_SECONDS, f"slowest case took {slowest[0]:.3f} s: {slowest[1]}"
    assert outcomes["error"] > cases // 10, outcomes        # the mutations reach the parser
    print(f"{name}: {outcomes}, slowest {slowest[0] * 1000:.1f} ms ({slowest[1]})")


def test_fuzz_checkpoint2_metadata(tmp_path):
    root = tmp_path / "save"
    shutil.copytree(FIX / "mf_saves" / "ckpt2_tp2pp2dp2", root, ignore=shutil.ignore_patterns("expected.json"))
    path = root / "iteration_00000010" / "metadata.json"
    original = path.read_bytes()
    rng = np.random.default_rng(31100)
    outcomes = {"ok": 0, "error": 0}
    for case in range(150):
        data, what = mutate(original, rng)
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            result = _run(_ckpt2, path)
        except Exception as err:     # noqa: BLE001
            pytest.fail(f"metadata.json case {case} ({what}): {type(err).__name__}: {err}")
        assert time.perf_counter() - start < MAX_CASE_SECONDS, what
        outcomes["ok" if result == "ok" else "error"] += 1
        if result != "ok":
            assert "\n" not in str(result) and str(root) in str(result), (what, str(result))
    assert outcomes["error"] > 15, outcomes


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from conftest import convert

    out = tmp_path_factory.mktemp("fuzz_gguf") / "tiny.gguf"
    assert convert(FIX / "llama" / "gqa_fused" / "model.ckpt", out, "--outtype", "q8_0") == 0
    return out


def test_fuzz_check(tmp_path, gguf_file):
    """``check`` on damaged GGUF files (its header, metadata and tensor infos are at the front: mutate there)."""
    original = gguf_file.read_bytes()
    head = original[:40000]
    path = tmp_path / "fuzz.gguf"
    rng = np.random.default_rng(31200)
    bad = 0
    for case in range(300):
        data, what = mutate(head, rng)
        path.write_bytes(data + original[40000:])
        start = time.perf_counter()
        try:
            report = check.check_file(path, values=True)
        except Exception as err:     # noqa: BLE001
            pytest.fail(f"check case {case} ({what}): {type(err).__name__}: {err}")
        assert time.perf_counter() - start < MAX_CASE_SECONDS, what
        bad += bool(report.errors)
    assert bad > 30
