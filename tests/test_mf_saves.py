"""Checkpoints written by MindFormers 2.1.0's own save code: Checkpoint 2.0 (iteration_*/ + metadata.json) and the
legacy rank layout (rank_N/ + strategy, also de-duplicated and single-rank), merged on the fly.

Fixtures: tests/fixtures/mf_saves (tests/gen_mfsave_fixtures.py; its docstring says what is real and what is
simulated). expected*.json holds the sha256 of every tensor MindFormers' own load_checkpoint (Checkpoint 2.0) or
MindSpore's unified_safetensors (legacy trees) returned; ms2gguf's merge must equal them bit for bit, and
converting any case must give the GGUF bytes of converting the unsharded model.
"""

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
from conftest import FIXTURES, LLAMA, convert

from msckpt import open_checkpoint
from msckpt.classify import group_of
from msckpt.source import Source
from msckpt.tiled import TiledTensor

MF = FIXTURES / "mf_saves"
QWEN3 = MF / "qwen3"
QWEN_TOKENIZER = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"
LLAMA_TOKENIZER = LLAMA / "tokenizer" / "tokenizer.model"
NORMAL = MF / "ckpt2_tp2pp2dp2"
DEDUP = MF / "ckpt2_tp2pp2dp2_dedup"
SINGLE = MF / "ckpt2_single"
ITER = "iteration_00000010"
QKV = "decoder.layers.0.self_attention.linear_qkv.weight"

# (id, checkpoint, options, expected digests)
CASES = [
    ("2.0-single", SINGLE, {}, SINGLE / "expected.json"),
    ("2.0-single-optimizer", SINGLE, {"optimizer": True}, SINGLE / "expected.json"),
    ("2.0-single-step5", SINGLE, {"step": 5, "optimizer": True}, SINGLE / "expected_5.json"),
    ("2.0-single-iteration-dir", SINGLE / "iteration_00000005", {}, SINGLE / "expected_5.json"),
    ("2.0-tp2pp2dp2", NORMAL, {}, NORMAL / "expected.json"),
    ("2.0-tp2pp2dp2-optimizer", NORMAL, {"optimizer": True}, NORMAL / "expected.json"),
    ("2.0-tp2pp2dp2-iteration-dir", NORMAL / ITER, {}, NORMAL / "expected.json"),
    ("2.0-dedup", DEDUP, {"optimizer": True}, DEDUP / "expected.json"),
    ("legacy-qwen3-tp2dp2", MF / "legacy_qwen3_tp2dp2" / "checkpoint", {},
     MF / "legacy_qwen3_tp2dp2" / "expected.json"),
    ("legacy-qwen3-rank0", MF / "legacy_qwen3_rank0" / "checkpoint", {}, NORMAL / "expected.json"),
    ("legacy-qwen3-rank0-step5", MF / "legacy_qwen3_rank0" / "checkpoint", {"step": 5}, SINGLE / "expected_5.json"),
    ("legacy-qwen3-rank0-dir", MF / "legacy_qwen3_rank0" / "checkpoint" / "rank_0", {}, NORMAL / "expected.json"),
    ("legacy-llama-dedup", MF / "legacy_llama_dedup" / "checkpoint", {}, MF / "legacy_llama_dedup" / "expected.json"),
]


def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def expected(path):
    return json.loads(path.read_text())


def mismatches(ckpt, want, optimizer):
    """Names whose dtype, shape or bytes differ from the reference, over whole tensors, row bands and boxes."""
    names = {n for n in want if optimizer or not n.startswith(("adam_m.", "adam_v."))}
    bad = sorted(names ^ {t.name for t in ckpt if group_of(t) in ("weights", "optimizer")})
    for t in ckpt:
        if t.name not in names:
            continue
        ref = want[t.name]
        full = np.asarray(t.array())
        if [t.dtype.name, list(t.shape), sha(full)] != [ref["dtype"], list(ref["shape"]), ref["sha256"]]:
            bad.append(t.name)
            continue
        if t.shape and sha(np.concatenate([t.rows(i, i + 3) for i in range(0, t.shape[0], 3)])) != ref["sha256"]:
            bad.append(t.name + " (rows)")
        for box in boxes(t.shape):
            if t.read_box(box).tobytes() != full[tuple(slice(a, b) for a, b in box)].tobytes():
                bad.append(f"{t.name} (box {box})")
                break
    return bad


def boxes(shape):
    """Boxes across every axis: a middle band of each axis alone, and all of them at once."""
    middle = [(n // 3, max(n // 3 + 1, 2 * n // 3 + 1)) for n in shape]
    out = [tuple(middle)] if shape else [()]
    for axis in range(len(shape)):
        out.append(tuple(middle[axis] if i == axis else (0, n) for i, n in enumerate(shape)))
    return out


@pytest.mark.parametrize("case,path,options,reference", CASES, ids=[c[0] for c in CASES])
def test_merge_equals_the_real_loaders(case, path, options, reference):
    with open_checkpoint(path, **options) as ckpt:
        assert mismatches(ckpt, expected(reference)["tensors"], options.get("optimizer", False)) == []


def test_wrong_file_contents_are_detected(tmp_path):
    """Negative control: two model files swapped (same shapes inside) must change the merge."""
    copy = copy_case(tmp_path, NORMAL)
    a, b = (copy / ITER / f"qwen3-model-000000{i}-0000008.safetensors" for i in (0, 1))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with open_checkpoint(copy) as ckpt:
        bad = mismatches(ckpt, expected(copy / "expected.json")["tensors"], False)
    assert QKV in bad and "decoder.layers.1.mlp.linear_fc1.weight" not in bad


def test_layouts_and_facts():
    with open_checkpoint(NORMAL) as ckpt:
        assert (ckpt.format, ckpt.iteration, ckpt.world, ckpt.deduplicated) == ("checkpoint-2.0", 10, 8, False)
        assert ckpt.common["step_num"] == 10 and ckpt.common["loss_scale"] == 1024.0
        qkv = ckpt[QKV]
        # tp on rows, optimizer pieces over dp folded under it: 4 row blocks, each held by one rank
        assert isinstance(qkv, TiledTensor) and qkv.shape == (32, 16) and len(qkv.tiles) == 4
        assert [offset for _, offset in qkv.tiles] == [(0, 0), (8, 0), (16, 0), (24, 0)]
        assert ckpt.layouts[QKV]["layout"]["tensor_map"] == [[0, 1], -1]
        # a tensor stored whole (replicated q_layernorm) is the file's own tensor: it copies byte for byte
        q_norm = ckpt["decoder.layers.0.self_attention.q_layernorm.weight"]
        assert not isinstance(q_norm, TiledTensor) and q_norm.byte_ranges()
        assert ckpt.layouts["decoder.layers.0.self_attention.q_layernorm.weight"]["holders"] == 4
    with open_checkpoint(DEDUP) as ckpt:
        assert ckpt.deduplicated and ckpt.world == 8 and not ckpt.opt_files
    with open_checkpoint(SINGLE) as ckpt:
        assert ckpt.world == 1 and ckpt.iterations.keys() == {5, 10} and ckpt.tracker == 10


def test_legacy_dedup_reads_each_block_where_mindspore_put_it():
    """MindSpore's remove_param_redundancy picks one rank per replica group (expected.json "holders", checked
    against the files by the generator); the merge reads each block from such a rank."""
    holders = expected(MF / "legacy_llama_dedup" / "expected.json")["holders"]
    with open_checkpoint(MF / "legacy_llama_dedup" / "checkpoint") as ckpt:
        assert ckpt.deduplicated
        rank_of = {str(f): r for r, f in ckpt.rank_files.items()}
        merged = [t for t in ckpt if hasattr(t, "layout")]
        assert len(merged) == len(holders)
        for t in merged:
            read = {rank_of[shard.source.path] for shard, _ in t.tiles}
            assert read <= set(holders[t.name]), t.name
        # a replicated norm (4 replicas) is saved by one rank only
        assert len(holders["model.layers.0.attention_norm.weight"]) == 1


# ------------------------------------------------------------------------------------------------ streaming

def spy_reads(monkeypatch):
    """[(file, offset, length)] of every positioned read of tensor data, and every file opened."""
    reads, opened = [], []
    read_into, init = Source.read_into, Source.__init__

    def spy_read(self, offset, buffer):
        reads.append((self.path, offset, len(memoryview(buffer).cast("B"))))
        return read_into(self, offset, buffer)

    def spy_init(self, path, *args, **kwargs):
        opened.append(str(path))
        return init(self, path, *args, **kwargs)

    monkeypatch.setattr(Source, "read_into", spy_read)
    monkeypatch.setattr(Source, "__init__", spy_init)
    return reads, opened


def test_optimizer_files_are_opened_only_when_asked(monkeypatch, tmp_path):
    reads, opened = spy_reads(monkeypatch)
    with open_checkpoint(NORMAL) as ckpt:
        assert len(ckpt) == 19
    assert opened and not [p for p in opened if "-opt-" in p]
    out = tmp_path / "out.gguf"
    assert convert_qwen3(NORMAL, out) == 0
    assert not [p for p in opened if "-opt-" in p]
    with open_checkpoint(NORMAL, optimizer=True) as ckpt:
        assert len([t for t in ckpt if getattr(t, "group", None) == "optimizer"]) == 38
    assert len({p for p in opened if "-opt-" in p}) == 8


@pytest.mark.parametrize("path", [NORMAL, MF / "legacy_llama_dedup" / "checkpoint"], ids=["2.0", "legacy-dedup"])
def test_streaming_reads_each_chunk_byte_once(monkeypatch, path):
    """Row bands of every merged tensor read exactly its bytes: no chunk byte twice, none besides."""
    with open_checkpoint(path) as ckpt:
        reads, _ = spy_reads(monkeypatch)
        for t in ckpt:
            if not isinstance(t, TiledTensor):
                continue
            reads.clear()
            for start in range(0, t.shape[0], 5):
                t.rows(start, start + 5)
            assert sum(n for _, _, n in reads) == t.nbytes, t.name
            spans = sorted(reads)
            assert all(a[0] != b[0] or a[1] + a[2] <= b[1] for a, b in zip(spans, spans[1:])), t.name


# ------------------------------------------------------------------------------------------------ conversion

def convert_qwen3(ckpt, out, *options):
    return convert(ckpt, out, "--config", QWEN3 / "config.json", "--name", "tiny", *options, map_name="qwen3",
                   tokenizer=QWEN_TOKENIZER)


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.gguf"
    assert convert_qwen3(QWEN3 / "model.ckpt", out) == 0
    return out.read_bytes()


@pytest.mark.parametrize("path", [SINGLE, NORMAL, DEDUP, NORMAL / ITER, MF / "legacy_qwen3_tp2dp2" / "checkpoint",
                                  MF / "legacy_qwen3_rank0" / "checkpoint",
                                  MF / "legacy_qwen3_rank0" / "checkpoint" / "rank_0"],
                         ids=["2.0-single", "2.0-tp2pp2dp2", "2.0-dedup", "2.0-iteration-dir", "legacy-tp2dp2",
                              "legacy-rank0", "legacy-rank0-dir"])
def test_qwen3_conversion_equals_unsharded(tmp_path, qwen3_gguf, path):
    out = tmp_path / "sharded.gguf"
    assert convert_qwen3(path, out) == 0
    assert out.read_bytes() == qwen3_gguf


def test_qwen3_older_iteration_converts_differently(tmp_path, qwen3_gguf):
    out = tmp_path / "step5.gguf"
    assert convert_qwen3(SINGLE, out, "--step", "5") == 0
    assert out.read_bytes() != qwen3_gguf


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama_dedup_conversion_equals_unsharded(tmp_path, outtype):
    common = ("--config", LLAMA / "bf16" / "config.yaml", "--name", "tiny", "--outtype", outtype)
    sharded, whole = tmp_path / "sharded.gguf", tmp_path / "whole.gguf"
    assert convert(MF / "legacy_llama_dedup" / "checkpoint", sharded, *common, tokenizer=LLAMA_TOKENIZER) == 0
    assert convert(LLAMA / "bf16" / "model.ckpt", whole, *common, tokenizer=LLAMA_TOKENIZER) == 0
    assert sharded.read_bytes() == whole.read_bytes()


# ------------------------------------------------------------------------------------------------ bad input

def copy_case(tmp_path, case):
    copy = tmp_path / case.name
    shutil.copytree(case, copy)
    return copy


def cli_error(capsys, tmp_path, ckpt, *options):
    """Converting must fail with one line naming the problem, leaving nothing at OUT."""
    out = tmp_path / "out.gguf"
    status = convert_qwen3(ckpt, out, *options)
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith("ms2gguf: error: ") and "\n" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))
    return err


def edit_metadata(folder, change):
    path = folder / ITER / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta["state_dict_metadata"], meta["storage_data"])
    path.write_text(json.dumps(meta))


def key(name, index):
    return str((name, (index,)))


def read_safetensors(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def drop_from_safetensors(path, name):
    """Rewrite a safetensors file without one entry (data of the others kept, offsets renumbered)."""
    header, data = read_safetensors(path)
    meta = header.pop("__metadata__", None)
    out, blobs, pos = {}, [], 0
    for entry, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if entry == name:
            continue
        a, b = info["data_offsets"]
        out[entry] = dict(info, data_offsets=[pos, pos + b - a])
        blobs.append(data[a:b])
        pos += b - a
    if meta is not None:
        out["__metadata__"] = meta
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_missing_file(tmp_path, capsys):
    copy = copy_case(tmp_path, DEDUP)
    victim = copy / ITER / "qwen3-model-0000003-0000008.safetensors"
    victim.unlink()
    err = cli_error(capsys, tmp_path, copy)
    assert f"{victim}: is missing; metadata.json stores chunk" in err


def test_missing_file_of_a_replica_uses_the_next_holder(tmp_path, capsys):
    """q_layernorm has 4 holders in the normal save: without rank 0's copy the next storage entry serves; a file
    holding chunks no other rank has is still an error."""
    copy = copy_case(tmp_path, NORMAL)
    name = "decoder.layers.0.self_attention.q_layernorm.weight"
    first = copy / ITER / "qwen3-model-0000000-0000008.safetensors"
    drop_from_safetensors(first, name)
    with open_checkpoint(copy) as ckpt:
        assert mismatches(ckpt, expected(copy / "expected.json")["tensors"], False) == []
        assert ckpt[name].source.path.endswith("qwen3-model-0000001-0000008.safetensors")
    for rank in (1, 2, 3):
        drop_from_safetensors(copy / ITER / f"qwen3-model-000000{rank}-0000008.safetensors", name)
    err = cli_error(capsys, tmp_path, copy)
    assert f"{first}: does not hold '{name}', whose chunk 0 metadata.json places there (nor does" in err


def test_truncated_chunk(tmp_path, capsys):
    copy = copy_case(tmp_path, NORMAL)
    victim = copy / ITER / "qwen3-model-0000005-0000008.safetensors"
    victim.write_bytes(victim.read_bytes()[:-40])
    err = cli_error(capsys, tmp_path, copy)
    assert str(victim) in err and "outside the" in err and "data section" in err


@pytest.mark.parametrize("change,words", [
    (lambda sd, st: sd[QKV]["chunk"].pop(), ["'" + QKV + "'", "cover 3 of its 4 slices", "slice 3 is missing"]),
    (lambda sd, st: sd[QKV]["chunk"][1].update(global_offset=[0]), ["slice 0 is listed twice"]),
    (lambda sd, st: sd[QKV]["chunk"][0].update(global_offset=[0, 0]), ["is not a one-element slice index"]),
    (lambda sd, st: sd[QKV]["chunk"][0].update(global_offset=[4]), ["slice index 4 is outside the 4 slices"]),
    (lambda sd, st: sd[QKV]["chunk"][0].update(local_shape=[16, 16]), ["has local_shape [16, 16]", "gives [8, 16]"]),
    (lambda sd, st: sd[QKV].update(global_shape=[30, 16]), ["does not split evenly"]),
    (lambda sd, st: sd[QKV].update(axis_fragmentations=[2, 2]), ["splits the axes [4, 1] times",
                                                                 "axis_fragmentations says [2, 2]"]),
    (lambda sd, st: st.update({key(QKV, 1): st[key(QKV, 2)], key(QKV, 2): st[key(QKV, 1)]}),
     ["chunk 2 (block at [16, 0]) is stored by rank 2", "the layout gives that rank the block at [8, 0]"]),
    (lambda sd, st: st.pop(key(QKV, 2)), ["storage_data has no files for chunk 2"]),
    (lambda sd, st: sd[QKV]["layout"].update(rank_list=[0, 1, 2]),
     ["has a rank_list [0, 1, 2] that does not fit device_matrix [2, 2]"]),
    (lambda sd, st: st[key(QKV, 0)][0].update(file_name="../x.safetensors"), ["outside its directory"]),
    (lambda sd, st: st[key(QKV, 0)][0].update(file_name="qwen3-opt-0000000-0000008.safetensors"),
     ["stored both in model and in optimizer (opt-*) files"]),
], ids=["hole", "overlap", "offset-form", "offset-range", "local-shape", "uneven", "fragments-vs-layout",
        "storage-vs-layout", "no-storage", "rank-list", "outside", "model-and-opt"])
def test_contradicting_metadata(tmp_path, capsys, change, words):
    copy = copy_case(tmp_path, NORMAL)
    edit_metadata(copy, change)
    err = cli_error(capsys, tmp_path, copy)
    assert f"{copy / ITER / 'metadata.json'}: " in err
    assert all(w in err for w in words), err


def test_chunk_that_contradicts_the_file_header(tmp_path, capsys):
    copy = copy_case(tmp_path, NORMAL)

    def grow(sd, st):                      # metadata says the rows are 5 apart per chunk, files hold 4
        sd[QKV]["global_shape"] = [40, 16]
        for chunk in sd[QKV]["chunk"]:
            chunk["local_shape"] = [10, 16]
    edit_metadata(copy, grow)
    err = cli_error(capsys, tmp_path, copy)
    assert "qwen3-model-0000000-0000008.safetensors: holds '" + QKV + "' as [8, 16]" in err
    assert "gives its chunk 0 the shape [10, 16]" in err


def test_chunks_of_different_dtypes(tmp_path, capsys):
    copy = copy_case(tmp_path, DEDUP)
    path = copy / ITER / "qwen3-model-0000001-0000008.safetensors"
    header, data = read_safetensors(path)
    header[QKV]["dtype"] = "F16"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    err = cli_error(capsys, tmp_path, copy)
    assert f"chunk of '{QKV}' is Float16 here but BFloat16 in" in err


def test_open_file_limit_is_raised_for_many_files():
    """A job of many ranks has more files than the usual soft limit of 1024 open files."""
    import resource

    from msckpt.source import ensure_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard limit {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        ensure_open_files(150)                               # fits (with 64 to spare): left alone
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256
        ensure_open_files(900)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 964
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_one_rank_of_a_legacy_tree(tmp_path, capsys):
    rank_1 = MF / "legacy_qwen3_tp2dp2" / "checkpoint" / "rank_1"
    err = cli_error(capsys, tmp_path, rank_1)
    assert f"{rank_1}: is one rank of a distributed save (rank_0, rank_2, rank_3 beside it)" in err


def test_missing_rank_of_a_legacy_tree(tmp_path, capsys):
    copy = copy_case(tmp_path, MF / "legacy_llama_dedup")
    shutil.rmtree(copy / "checkpoint" / "rank_5")
    err = cli_error(capsys, tmp_path, copy / "checkpoint")
    assert "rank_5/ is missing" in err and "describes 8 ranks" in err


def test_legacy_dedup_block_nobody_holds(tmp_path, capsys):
    copy = copy_case(tmp_path, MF / "legacy_llama_dedup")
    name = "model.layers.0.attention.wq.weight"         # 4 blocks (mp 2 x optimizer 2), one holder each
    holder = expected(copy / "expected.json")["holders"][name][1]
    path = next((copy / "checkpoint" / f"rank_{holder}").glob("*.safetensors"))
    drop_from_safetensors(path, name)
    out = tmp_path / "out.gguf"
    status = convert(copy / "checkpoint", out, "--config", LLAMA / "bf16" / "config.yaml", tokenizer=LLAMA_TOKENIZER)
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and not out.exists(), err
    assert f"rank_{holder}" in err and f"has no '{name}', and no other rank holding the same block of it" in err


def test_unfinished_multi_rank_save(tmp_path, capsys):
    """Rank 0 writes metadata.json last; model files of several ranks without it are an unfinished save."""
    copy = copy_case(tmp_path, DEDUP)
    (copy / ITER / "metadata.json").unlink()
    err = cli_error(capsys, tmp_path, copy)
    assert "holds model files of a multi-rank save (qwen3-model-0000000-0000008.safetensors" in err
    assert "did not finish" in err


# ------------------------------------------------------------------------------------------------ iterations

def test_iteration_choice(tmp_path, capsys):
    with open_checkpoint(SINGLE, step="5") as ckpt:
        assert ckpt.iteration == 5 and ckpt.common["step_num"] == 5
    err = cli_error(capsys, tmp_path, SINGLE, "--step", "7")
    assert "has no iteration_00000007/ for --step 7 (iterations here: 5, 10)" in err
    err = cli_error(capsys, tmp_path, SINGLE, "--step", "1_10")
    assert "EPOCH_N selects a step of a legacy rank_N/ tree" in err and "(iterations here: 5, 10)" in err
    err = cli_error(capsys, tmp_path, SINGLE / "iteration_00000005", "--step", "10")
    assert "is one iteration directory; --step 10 selects an iteration of the save root" in err
    err = cli_error(capsys, tmp_path, SINGLE, "--strategy", "x.ckpt")
    assert "metadata.json holds the layouts, so --strategy does not apply" in err


def test_tracker(tmp_path, capsys):
    copy = copy_case(tmp_path, SINGLE)
    tracker = copy / "latest_checkpointed_iteration.txt"
    tracker.write_text("5")
    with open_checkpoint(copy) as ckpt:
        assert ckpt.iteration == 5
    tracker.write_text("20")
    err = cli_error(capsys, tmp_path, copy)
    assert "latest_checkpointed_iteration.txt: names iteration 20, but iteration_00000020/ is missing" in err
    tracker.write_text("ten")
    assert "should hold an iteration number" in cli_error(capsys, tmp_path, copy)
    tracker.unlink()
    err = cli_error(capsys, tmp_path, copy)
    assert "has several iterations (5, 10) and no latest_checkpointed_iteration.txt" in err and "--step N" in err
    with open_checkpoint(copy, step=10) as ckpt:
        assert ckpt.iteration == 10
    shutil.rmtree(copy / "iteration_00000005")
    with open_checkpoint(copy) as ckpt:              # one iteration and no tracker: that one
        assert ckpt.iteration == 10 and ckpt.tracker is None


def test_both_layouts_in_one_directory(tmp_path, capsys):
    copy = copy_case(tmp_path, SINGLE)
    shutil.copytree(MF / "legacy_qwen3_rank0" / "checkpoint" / "rank_0", copy / "rank_0")
    assert "holds both rank_*/ (legacy) and iteration_*/ (Checkpoint 2.0) saves" in cli_error(capsys, tmp_path, copy)


def test_single_card_duplicate_names(tmp_path, capsys):
    copy = copy_case(tmp_path, SINGLE)
    folder = copy / ITER
    shutil.copy(folder / "qwen3-model-0000000-0000001.safetensors", folder / "extra.safetensors")
    err = cli_error(capsys, tmp_path, copy)
    assert "holds several model files (extra.safetensors, qwen3-model-0000000-0000001.safetensors)" in err


# ------------------------------------------------------------------------------------------------ inspect

def test_inspect_checkpoint2(capsys):
    from gguf_out.cli import main

    assert main(["inspect", str(NORMAL)]) == 0
    text = capsys.readouterr().out
    assert "format:     checkpoint-2.0" in text
    assert ("checkpoint 2.0: iteration 10 (iterations --step: 10; latest_checkpointed_iteration.txt: 10), 8 rank(s), "
            "metadata.json") in text
    assert "common.json: epoch_num 1, step_num 10, global_step 10, loss_scale 1024.0, global_batch_size 8" in text
    assert "model files: 8," in text and "optimizer files: 8," in text
    assert "optimizer state: 38 entries" in text and "model weights: 19 entries" in text
    line = next(li for li in text.splitlines() if li.strip().startswith(QKV) and "map" in li)
    assert "32x16" in line and " 4x1 " in line and "dev [2, 2] map [[0, 1], -1] ranks 0-3" in line
    assert "parameters in metadata.json: 19 (+ 38 optimizer states, split like their parameters)" in text

    assert main(["inspect", "--json", str(SINGLE), "--step", "5"]) == 0
    info = json.loads(capsys.readouterr().out)["checkpoint2"]
    assert info["iteration"] == 5 and info["iterations"] == [5, 10] and info["tracker"] == 10
    assert info["world"] == 1 and not info["metadata"] and info["common"]["step_num"] == 5
    assert [f["file"] for f in info["opt_files"]] == ["qwen3-opt-0000000-0000001.safetensors"]

    assert main(["inspect", str(DEDUP)]) == 0
    assert "8 rank(s), de-duplicated (remove_redundancy)" in capsys.readouterr().out


def test_inspect_legacy_layouts(capsys):
    from gguf_out.cli import main

    assert main(["inspect", str(MF / "legacy_llama_dedup" / "checkpoint")]) == 0
    text = capsys.readouterr().out
    assert "distributed: 8 rank(s) (2 pipeline stage(s) x 4 devices), step 1_10, de-duplicated" in text
    assert main(["inspect", str(MF / "legacy_qwen3_rank0" / "checkpoint")]) == 0
    text = capsys.readouterr().out
    assert "no strategy (one rank: whole tensors)" in text and "saved steps (--step): 1_5, 1_10" in text
