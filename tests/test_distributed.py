"""Distributed checkpoints (rank_N/ shards + strategy): merged on the fly, compared with MindSpore's own merge.

Fixtures: tests/fixtures/dist (8-rank hand-built sample, 11 layouts, MindSpore-merged result) and
tests/fixtures/dist_llama (tiny Llama cut into shards with MindSpore's layout code and merged by
mindspore.transform_checkpoints; expected.json holds the sha256 of every tensor MindSpore merged), both from
real MindSpore 2.10 (tests/gen_dist_fixtures.py).
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, LLAMA, convert, write_ckpt

from msckpt import CheckpointError, open_checkpoint
from msckpt.distributed import MergedTensor
from msckpt.schema import message_class
from msckpt.strategy import load_strategy

DIST = FIXTURES / "dist"
DL = FIXTURES / "dist_llama"
BF16 = LLAMA / "bf16"

CASES = [
    ("tp2x2", DL / "tp2x2", {}, DL / "tp2x2" / "expected.json"),
    ("opt8", DL / "opt8", {}, DL / "opt8" / "expected.json"),
    ("opt8-json", DL / "opt8", {"strategy": DL / "opt8_strategy.json"}, DL / "opt8" / "expected.json"),
    ("layout", DL / "layout", {}, DL / "layout" / "expected.json"),
    ("pipeline", DL / "pipeline" / "checkpoint", {}, DL / "pipeline" / "expected.json"),
    ("pipeline-merged-strategy", DL / "pipeline" / "checkpoint", {"strategy": DL / "pipeline" / "merged_strategy.ckpt"},
     DL / "pipeline" / "expected.json"),
    ("pipeline-step2", DL / "pipeline" / "checkpoint", {"step": 2}, DL / "pipeline" / "expected_step2.json"),
    ("pipeline-step1_2", DL / "pipeline" / "checkpoint", {"step": "1_2"}, DL / "pipeline" / "expected_step2.json"),
]


def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def by_row_bands(tensor, band=5):
    return np.concatenate([tensor.rows(i, i + band) for i in range(0, tensor.shape[0], band)])


def digest_mismatches(ckpt, expected):
    bad = []
    for t in ckpt:
        want = expected[t.name]
        if [t.dtype.name, list(t.shape), sha(t.array())] != [want["dtype"], want["shape"], want["sha256"]]:
            bad.append(t.name)
        elif t.shape and sha(by_row_bands(t)) != want["sha256"]:
            bad.append(t.name + " (rows)")
    return bad


# ------------------------------------------------------------------------------------------------ merge

def test_sample_matches_mindspore_for_all_11_layouts():
    with open_checkpoint(DIST / "src", strategy=DIST / "strategy.ckpt") as ckpt, \
            open_checkpoint(DIST / "dst" / "rank_0" / "merged0.ckpt") as merged:
        assert ckpt.format == "distributed" and len(ckpt.strategy) == 11
        assert ckpt.names() == merged.names()
        sharded = [t for t in ckpt if isinstance(t, MergedTensor)]
        assert len(sharded) == 11
        for want in merged:
            got = ckpt[want.name]
            assert (got.dtype, got.shape) == (want.dtype, want.shape), want.name
            assert got.array().tobytes() == want.array().tobytes(), want.name
            if got.shape:
                assert by_row_bands(got, 3).tobytes() == want.array().tobytes(), want.name
        assert ckpt["global_step"].value() == 5 and ckpt["w1"].byte_ranges() is None


def test_sample_json_strategy():
    # the JSON sample lists only w1 (tensor_shape [16, 8]); everything else then counts as unsharded
    with open_checkpoint(DIST / "src", strategy=DIST / "strategy.json") as ckpt, \
            open_checkpoint(DIST / "dst" / "rank_0" / "merged0.ckpt") as merged:
        assert isinstance(ckpt["w1"], MergedTensor) and ckpt["w1"].layout.full_shape == (16, 8)
        assert ckpt["w1"].array().tobytes() == merged["w1"].array().tobytes()


@pytest.mark.parametrize("case,folder,options,expected", CASES, ids=[c[0] for c in CASES])
def test_llama_shards_match_mindspore(case, folder, options, expected):
    want = json.loads(expected.read_text())["tensors"]
    with open_checkpoint(folder, **options) as ckpt:
        assert sorted(ckpt.names()) == sorted(want)
        assert digest_mismatches(ckpt, want) == []


def test_wrong_shard_order_is_detected(tmp_path):
    """Negative control: swapping two ranks' files (same shapes) must change the merge."""
    copy = tmp_path / "tp2x2"
    shutil.copytree(DL / "tp2x2", copy)
    a, b = copy / "rank_1" / "llama_rank_1-1_10.ckpt", copy / "rank_2" / "llama_rank_2-1_10.ckpt"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    want = json.loads((copy / "expected.json").read_text())["tensors"]
    with open_checkpoint(copy) as ckpt:
        bad = digest_mismatches(ckpt, want)
    assert "model.layers.0.attention.wq.weight" in bad and "global_step" not in bad


def test_unsharded_entries_come_from_rank_0():
    with open_checkpoint(DL / "tp2x2") as ckpt:
        step = ckpt["global_step"]
        assert not isinstance(step, MergedTensor) and step.value() == 10
        assert step.source is ckpt.rank_checkpoints[0].source


def test_rows_read_only_the_covering_shards(monkeypatch):
    from msckpt.tensor import Tensor

    with open_checkpoint(DL / "tp2x2") as ckpt:
        wq = ckpt["model.layers.0.attention.wq.weight"]      # [0, -1] + optimizer shard 2/2: 4 row blocks of 16
        assert len(wq.tiles) == 4 and wq.shard_shape == (16, 64)
        offsets = {id(shard): offset for shard, offset in wq.tiles}
        calls = []
        read = Tensor.read_box
        monkeypatch.setattr(Tensor, "read_box", lambda shard, box:
                            calls.append((offsets[id(shard)],) + tuple(box[0])) or read(shard, box))
        whole = wq.array()
        calls.clear()
        assert wq.rows(20, 30).tobytes() == whole[20:30].tobytes()
        assert calls == [((16, 0), 4, 14)]
        calls.clear()
        assert wq.rows(10, 40).tobytes() == whole[10:40].tobytes()
        assert calls == [((0, 0), 10, 16), ((16, 0), 0, 16), ((32, 0), 0, 8)]
        calls.clear()
        # a box across shards on both axes reads each shard's part of it only
        assert wq.read_box(((14, 18), (3, 9))).tobytes() == whole[14:18, 3:9].tobytes()
        assert calls == [((0, 0), 14, 16), ((16, 0), 0, 2)]


def test_strategy_parsing():
    s = load_strategy(DIST / "strategy.ckpt")
    nested = s.get("w4_nested")
    assert nested.nested and nested.tensor_map == ((2, 1), ()) and nested.parts == (4, 1)
    assert s.get("w6_opt_minus1").opt_size == 2 and s.get("b_opt").opt_size == 8
    assert s.get("w1").coordinate(6) == [1, 2] and s.get("w1").slice_index(6) == (0, 2)
    one_axis = load_strategy(DL / "layout" / "strategy.ckpt").get("model.layers.1.ffn_norm.weight")
    assert one_axis.tensor_map == ((2, 0),) and one_axis.parts == (4,)      # the empty extra entry is dropped
    per_stage = load_strategy(DL / "pipeline" / "strategy")
    merged = load_strategy(DL / "pipeline" / "merged_strategy.ckpt")
    assert per_stage.stages == merged.stages == [0, 1] and per_stage.devices == 4
    assert {n: (lay.stage, lay.describe()) for n, lay in per_stage.layouts.items()} == \
        {n: (lay.stage, lay.describe()) for n, lay in merged.layouts.items()}
    assert per_stage.get("model.norm_out.weight").stage == 1


# ------------------------------------------------------------------------------------------------ steps, discovery

def test_newest_step_is_numeric_not_lexicographic(tmp_path):
    copy = tmp_path / "pipeline"
    shutil.copytree(DL / "pipeline", copy)
    for f in (copy / "checkpoint").glob("rank_*/*-1_2.ckpt"):       # the x0.5 weights become step 10
        f.rename(f.with_name(f.name.replace("-1_2.ckpt", "-1_10.ckpt")))
    want = json.loads((copy / "expected_step2.json").read_text())["tensors"]
    with open_checkpoint(copy / "checkpoint") as ckpt:
        assert ckpt.step == "1_10"
        assert digest_mismatches(ckpt, want) == []
    with open_checkpoint(copy / "checkpoint", step=4) as ckpt:
        assert ckpt.step == "1_4" and ckpt["global_step"].value() == 4


def test_strategy_is_found_in_the_mindformers_layout_and_inside_the_directory():
    with open_checkpoint(DL / "pipeline" / "checkpoint") as ckpt:
        assert ckpt.strategy.path.endswith("strategy") and len(ckpt.strategy.files) == 4
    with open_checkpoint(DL / "opt8") as ckpt:
        assert ckpt.strategy.path.endswith("strategy.ckpt")


# ------------------------------------------------------------------------------------------------ errors

def write_strategy(path, layouts):
    """A strategy file from {name: dict(dev, map, step=0, size=0, field=0, split=[])}."""
    smap = message_class("node_strategy", "mindspore.straspb.ParallelStrategyMap")()
    smap.current_stage = 0
    for name, lay in layouts.items():
        item = smap.parallel_layout_item.add()
        item.param_name = name
        pl = item.parallel_layouts
        pl.dev_matrix.add().dim.extend(lay["dev"])
        pl.tensor_map.add().dim.extend(lay["map"])
        pl.param_split_shape.add().dim.extend(lay.get("split", []))
        pl.indices_offset.add()
        pl.field = lay.get("field", 0)
        pl.opt_weight_shard_step = lay.get("step", 0)
        pl.opt_weight_shard_size = lay.get("size", 0)
    path.write_bytes(smap.SerializeToString())


def rewrite_rank(path, change):
    """Rewrite a rank file with ``change(name, dtype, array)`` -> (dtype, array) or None (drop)."""
    with open_checkpoint(path) as ckpt:
        entries = [(t.name, t.dtype.name, np.array(t.array())) for t in ckpt]
    out = []
    for name, dtype, array in entries:
        new = change(name, dtype, array)
        if new is not None:
            out.append((name,) + new)
    write_ckpt(path, out)


def tp2x2_copy(tmp_path):
    copy = tmp_path / "tp2x2"
    shutil.copytree(DL / "tp2x2", copy)
    return copy


def cli_error(capsys, tmp_path, ckpt, *options):
    out = tmp_path / "out.gguf"
    status = convert(ckpt, out, "--config", BF16 / "config.yaml", *options)
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith("ms2gguf: error: ") and "\n" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))
    return err


def test_missing_rank(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    shutil.rmtree(copy / "rank_2")
    err = cli_error(capsys, tmp_path, copy)
    assert "rank_2/ is missing" in err and "describes 4 ranks" in err


def test_extra_rank(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    shutil.copytree(copy / "rank_3", copy / "rank_4")
    err = cli_error(capsys, tmp_path, copy)
    assert "rank_4/" in err and "only 4 ranks" in err


def test_inconsistent_shard_shapes(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    name = "model.layers.0.attention.wk.weight"
    rewrite_rank(copy / "rank_1" / "llama_rank_1-1_10.ckpt",
                 lambda n, d, a: (d, a[:-1]) if n == name else (d, a))
    err = cli_error(capsys, tmp_path, copy)
    assert "rank_1" in err and f"shard of '{name}' is BFloat16 [7, 64] here but BFloat16 [8, 64]" in err


def test_sharded_parameter_missing_from_a_rank(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    name = "model.layers.1.attention.wo.weight"         # [-1, 0]: ranks 1 and 3 hold the same slice
    rewrite_rank(copy / "rank_3" / "llama_rank_3-1_10.ckpt", lambda n, d, a: None if n == name else (d, a))
    want = json.loads((copy / "expected.json").read_text())["tensors"]
    with open_checkpoint(copy) as ckpt:                  # a replica still has it (as in a de-duplicated save)
        assert digest_mismatches(ckpt, want) == []
    rewrite_rank(copy / "rank_1" / "llama_rank_1-1_10.ckpt", lambda n, d, a: None if n == name else (d, a))
    err = cli_error(capsys, tmp_path, copy)
    assert "rank_1" in err and f"has no '{name}'" in err and "(rank_1, rank_3) has it either" in err


def test_unsharded_entry_differing_between_ranks(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    rewrite_rank(copy / "rank_2" / "llama_rank_2-1_10.ckpt",
                 lambda n, d, a: ("Int64", a.astype(np.int64)) if n == "global_step" else (d, a))
    err = cli_error(capsys, tmp_path, copy)
    assert "'global_step' is not in the strategy" in err and "Int64 [1] here" in err


@pytest.mark.parametrize("change,words", [
    ({"field": 2}, ["field split", "not supported"]),
    ({"split": [20, 12]}, ["param_split_shape [20, 12]", "not supported"]),
    ({"map": [0, -1, -1]}, ["tensor map [0, -1, -1] has 3 axes", "has 2"]),
    ({"map": [0, 2]}, ["does not fit dev_matrix"]),
    ({"step": 1, "size": 2}, ["optimizer shard group", "does not hold the same model-parallel slice"]),
    ({"step": 2, "size": 3}, ["optimizer shard size 3 does not fit 2 replica(s)"]),
])
def test_bad_or_unsupported_layouts(tmp_path, capsys, change, words):
    copy = tp2x2_copy(tmp_path)
    # a strategy with only wk (as the fixture has it, then changed); the other shards pass as unsharded
    layout = {"dev": [2, 2], "map": [0, -1], "step": 2, "size": 2}
    layout.update(change)
    write_strategy(copy / "strategy.ckpt", {"model.layers.0.attention.wk.weight": layout})
    err = cli_error(capsys, tmp_path, copy)
    assert all(w in err for w in words), err
    assert "model.layers.0.attention.wk.weight" in err


def test_json_tensor_shape_must_match(tmp_path, capsys):
    data = json.loads((DIST / "strategy.json").read_text())
    data["parallel_layout_item"]["w1"]["tensor_shape"] = [16, 4]
    bad = tmp_path / "strategy.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"'w1': the strategy gives tensor_shape \[16, 4\] but its shards "
                       r"\(\[16, 2\] in .*rank_0.*\) merge to \[16, 8\]"):
        open_checkpoint(DIST / "src", strategy=bad)


def test_strategy_missing_a_pipeline_stage(tmp_path, capsys):
    stage1 = DL / "pipeline" / "strategy" / "ckpt_strategy_rank_2.ckpt"
    err = cli_error(capsys, tmp_path, DL / "pipeline" / "checkpoint", "--strategy", stage1)
    assert "covers pipeline stages [1]" in err and "[0] are missing" in err


def test_no_strategy_found(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    (copy / "strategy.ckpt").unlink()
    err = cli_error(capsys, tmp_path, copy)
    assert "no strategy file was found" in err and "--strategy" in err
    # given explicitly it works
    assert convert(copy, tmp_path / "ok.gguf", "--config", BF16 / "config.yaml", "--strategy",
                   DL / "tp2x2" / "strategy.ckpt") == 0


def test_several_strategy_candidates(tmp_path, capsys):
    copy = tp2x2_copy(tmp_path)
    shutil.copy(copy / "strategy.ckpt", copy / "strategy_old.ckpt")
    assert "several strategy candidates" in cli_error(capsys, tmp_path, copy)


def test_strategy_that_is_not_one(tmp_path, capsys):
    err = cli_error(capsys, tmp_path, DL / "tp2x2", "--strategy", BF16 / "model.ckpt")
    assert "is this a parallel strategy file?" in err


def test_step_errors(tmp_path, capsys):
    err = cli_error(capsys, tmp_path, DL / "pipeline" / "checkpoint", "--step", "3")
    assert "rank_0" in err and "no checkpoint for step 3" in err and "1_2, 1_4" in err
    assert "bad step" in cli_error(capsys, tmp_path, DL / "pipeline" / "checkpoint", "--step", "x")
    copy = tmp_path / "p"
    shutil.copytree(DL / "pipeline", copy)
    (copy / "checkpoint" / "rank_1" / "llama_rank_1-1_4.ckpt").unlink()
    with open_checkpoint(copy / "checkpoint") as ckpt:      # newest step all ranks have
        assert ckpt.step == "1_2"
    for f in (copy / "checkpoint").glob("rank_*/*-1_2.ckpt"):
        if f.parent.name != "rank_1":
            f.unlink()                                      # now rank_1 holds only step 2, the others step 4
    assert "hold different steps" in cli_error(capsys, tmp_path, copy / "checkpoint")


def test_strategy_option_on_a_single_file(tmp_path, capsys):
    err = cli_error(capsys, tmp_path, BF16 / "model.ckpt", "--strategy", DL / "tp2x2" / "strategy.ckpt")
    assert "is a single file" in err


# ------------------------------------------------------------------------------------------------ conversion

@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_sharded_conversion_equals_unsharded(tmp_path, outtype):
    sharded, whole = tmp_path / "sharded.gguf", tmp_path / "whole.gguf"
    common = ("--config", BF16 / "config.yaml", "--name", "tiny", "--outtype", outtype)
    assert convert(DL / "tp2x2", sharded, *common) == 0
    assert convert(BF16 / "model.ckpt", whole, *common) == 0
    assert sharded.read_bytes() == whole.read_bytes()


def fused_shards(tmp_path):
    """gqa_fused cut by rows over 2 ranks for the fused tensors (mp = 2); the rest unsharded on both ranks."""
    folder = tmp_path / "fused"
    with open_checkpoint(LLAMA / "gqa_fused" / "model.ckpt") as ckpt:
        entries = [(t.name, t.dtype.name, np.array(t.array())) for t in ckpt]
    fused = [n for n, _, _ in entries if "w_qkv" in n or "w_gate_hidden" in n]
    for rank in range(2):
        write_ckpt(folder / f"rank_{rank}" / "net.ckpt",
                   [(n, d, np.split(a, 2)[rank] if n in fused else a) for n, d, a in entries])
    write_strategy(folder / "strategy.ckpt", {n: {"dev": [2], "map": [0, -1]} for n in fused})
    return folder, fused


def test_train_tp_comes_from_the_strategy(tmp_path, capsys):
    folder, fused = fused_shards(tmp_path)
    with open_checkpoint(folder) as ckpt:
        assert ckpt.train_tp_hint(fused) == 2 and ckpt.train_tp_hint(["global_step"]) is None
    cfg = ("--config", LLAMA / "gqa_fused" / "config.yaml", "--name", "tiny")
    out = {}
    for key, ckpt, options in [("sharded", folder, ("--fused-layout", "contiguous")),
                               ("tp2", LLAMA / "gqa_fused" / "model.ckpt", ("--fused-layout", "contiguous",
                                                                              "--train-tp", "2")),
                               ("tp1", LLAMA / "gqa_fused" / "model.ckpt", ("--fused-layout", "contiguous")),
                               ("sharded_tp1", folder, ("--fused-layout", "contiguous", "--train-tp", "1")),
                               ("sharded_interleaved", folder, ()),
                               ("interleaved", LLAMA / "gqa_fused" / "model.ckpt", ())]:
        path = tmp_path / f"{key}.gguf"
        assert convert(ckpt, path, *cfg, *options) == 0
        out[key] = path.read_bytes()
    assert out["sharded"] == out["tp2"] != out["tp1"]
    assert out["sharded_tp1"] == out["tp1"]
    assert out["sharded_interleaved"] == out["interleaved"]


def test_inspect_distributed(capsys):
    from gguf_out.cli import main

    assert main(["inspect", str(DL / "tp2x2")]) == 0
    text = capsys.readouterr().out
    assert "format:     distributed" in text
    assert "distributed: 4 rank(s) (1 pipeline stage(s) x 4 devices), step 1_10" in text
    assert "rank_3" in text and "llama_rank_3-1_10.ckpt" in text
    line = next(li for li in text.splitlines() if li.strip().startswith("model.layers.0.attention.wq.weight")
                and "[2, 2]" in li)
    assert "[0, -1]" in line and "2/2" in line and "16x64 -> 64x64" in line
    assert "not in the strategy (taken from rank_0): global_step, learning_rate" in text

    assert main(["inspect", "--json", str(DL / "pipeline" / "checkpoint"), "--step", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    dist = info["distributed"]
    assert dist["stages"] == 2 and dist["devices_per_stage"] == 2 and dist["step"] == "1_2"
    norm = next(e for e in dist["layouts"] if e["name"] == "model.norm_out.weight")
    assert norm == {"name": "model.norm_out.weight", "stage": 1, "dev_matrix": [2], "tensor_map": "[0]",
                    "opt_shard_step": 0, "opt_shard_size": 0, "replicas": 1, "shard_shape": [32], "shape": [64],
                    "read_from": [2, 3]}
    assert dist["steps"] == ["1_2", "1_4"] and dist["deduplicated"] is False

