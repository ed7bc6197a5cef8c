"""Generate the MindFormers LoRA fixtures in tests/fixtures/lora/.

Real MindFormers 2.1.0 LoRA: a legacy ``LlamaForCausalLM`` wrapped by MindFormers' own PEFT code
(``mindformers.pet.get_pet_model`` with a ``pet_type: lora`` config, which replaces the target ``Linear`` cells by
mindpet's ``LoRADense``), run on CPU. Needs the fixture venv of tests/gen_llama_fixtures.py (MindSpore 2.10.0 CPU,
MindFormers 2.1.0, numpy 1.26.4, PyYAML); the tests that use the output do not.

    GLOG_v=3 /work/venvs/mf/bin/python tests/gen_lora_fixtures.py

Per variant ``<v>`` (``VARIANTS``), with rank 4 and alpha 16 (scale 4, so a merge without the scale is visibly
wrong) and non-zero ``B`` (MindFormers initialises it to zero; a trained adapter is not):

* ``<v>/model.ckpt``   ``mindspore.save_checkpoint`` of the whole LoRA network: base weights plus
  ``*.mindpet_delta_lora_a`` [r, in] / ``*.mindpet_delta_lora_b`` [out, r] (what a fine-tuning run saves);
* ``<v>/lora/lora.ckpt`` the LoRA network's trainable parameters only (``save_trainable_params``: the base is
  frozen by ``PetModel``), with the ``adapter_config.json`` MindFormers' ``PetModel`` writes (PEFT format: ``r``,
  ``lora_alpha``) beside it and no yaml;
* ``<v>/base.ckpt``    (unfused only) the base network alone;
* ``<v>/config.yaml``  the LlamaConfig with ``pet_config`` as a MindFormers fine-tuning yaml has it;
* ``<v>/tokens.json``, ``<v>/logits.npy``  the LoRA network's logits at every position (eval mode, dropout 0);
  ``<v>/base_logits.npy`` the base network's (the LoRA must move them);
* ``mcore/model.ckpt`` + ``config.json`` + ``adapter_config.json``: mcore naming (``*.lora_A.weight`` /
  ``*.lora_B.weight``) from a real ``TrainingQwen3ForCausalLM`` with LoRA (generate_mcore; no logits: the mcore
  network does not run on CPU).

The tokenizer is tests/fixtures/llama/tokenizer (not copied). Every logit is checked against a float64 NumPy forward
pass of the merged weights ``W + (alpha / r) B @ A``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_llama_fixtures as G  # noqa: E402

DEFAULT_OUT = HERE / "fixtures" / "lora"
RANK, ALPHA = 4, 16

VARIANTS = {
    # separate wq / wk / wv: LoRA on every attention and feed-forward projection
    "unfused": dict(
        seed=1501, hidden_size=64, num_layers=2, num_heads=8, n_kv_heads=2, qkv_concat=False,
        intermediate_size=128, rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=2048, vocab="tok",
        param_init_type="float32", targets=r".*wq|.*wk|.*wv|.*wo|.*w1|.*w2|.*w3", base=True,
    ),
    # fused w_qkv / w_gate_hidden (MindFormers 1.4+ interleaved layout): LoRA B rows in the fused layout
    "fused": dict(
        seed=1502, hidden_size=64, num_layers=2, num_heads=8, n_kv_heads=2, qkv_concat=True,
        intermediate_size=128, rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=2048, vocab="tok",
        param_init_type="float32", targets=r".*w_qkv|.*wo|.*w_gate_hidden|.*w2", base=False,
    ),
}


def pet_config(v):
    return {"pet_type": "lora", "lora_rank": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
            "target_modules": v["targets"]}


def lora_weights(v, params, rs):
    """{lora param name: array} for every target weight: A ~ N(0, 1/sqrt(in)), B ~ N(0, 0.1/sqrt(r)) so that
    scale * B @ A changes each weight by about half its own size."""
    import re
    out = {}
    for name, w in params.items():
        if w.ndim != 2 or not name.endswith(".weight"):
            continue
        cell = name[:-len(".weight")]
        if not re.match(v["targets"], cell.split(".")[-1]):
            continue
        n_out, n_in = w.shape
        out[cell + ".mindpet_delta_lora_a"] = rs.normal(0, 1 / np.sqrt(n_in), (RANK, n_in)).astype(np.float32)
        out[cell + ".mindpet_delta_lora_b"] = rs.normal(0, 0.1 / np.sqrt(RANK), (n_out, RANK)).astype(np.float32)
    return out


def merged_hf(v, w, params, lora):
    """The HF-layout weights of the merged model (for the NumPy reference): merge in MindFormers' layout, then
    undo the fused layouts the way gen_llama_fixtures.mindformers_params makes them."""
    scale = ALPHA / RANK
    merged = dict(params)
    for name in lora:
        if name.endswith("_a"):
            cell = name[:-len(".mindpet_delta_lora_a")]
            b = lora[cell + ".mindpet_delta_lora_b"].astype(np.float64)
            merged[cell + ".weight"] = params[cell + ".weight"] + scale * b @ lora[name].astype(np.float64)
    out = dict(w)
    nh, nkv, H = v["num_heads"], v["n_kv_heads"], v["hidden_size"]
    hd, r = H // nh, nh // nkv
    for i in range(v["num_layers"]):
        p, m = f"layers.{i}.", f"model.layers.{i}."
        if v["qkv_concat"]:
            qkv = merged[m + "attention.w_qkv.weight"].reshape(nkv, (r + 2) * hd, H)
            out[p + "wq"] = qkv[:, :r * hd].reshape(-1, H)
            out[p + "wk"] = qkv[:, r * hd:(r + 1) * hd].reshape(-1, H)
            out[p + "wv"] = qkv[:, (r + 1) * hd:].reshape(-1, H)
            gu = merged[m + "feed_forward.w_gate_hidden.weight"].reshape(-1, 2, H)
            out[p + "w1"], out[p + "w3"] = gu[:, 0], gu[:, 1]
        else:
            for k in ("wq", "wk", "wv"):
                out[p + k] = merged[m + f"attention.{k}.weight"]
            out[p + "w1"] = merged[m + "feed_forward.w1.weight"]
            out[p + "w3"] = merged[m + "feed_forward.w3.weight"]
        out[p + "wo"] = merged[m + "attention.wo.weight"]
        out[p + "w2"] = merged[m + "feed_forward.w2.weight"]
    return out


def build_lora_net(model_kw, v, work):
    from mindformers.pet import get_pet_model

    base = G.build_net(model_kw)
    net = get_pet_model(base, dict(pet_config(v)))
    net.set_train(False)
    return base, net


def generate(out_dir: Path, work: Path) -> dict:
    import mindspore as ms
    import sentencepiece as spm

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(0)
    tok = HERE / "fixtures" / "llama" / "tokenizer" / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    ids = [sp.bos_id()] + sp.encode(G.TEXT)
    n_pieces = sp.get_piece_size()
    report = {}
    for name, v in VARIANTS.items():
        vdir = out_dir / name
        (vdir / "lora").mkdir(parents=True, exist_ok=True)
        V = G.vocab_rows(v, n_pieces)
        rs = np.random.RandomState(v["seed"])
        w = G.make_weights(v, V)
        params = G.mindformers_params(v, w)
        lora = lora_weights(v, params, rs)
        model_kw = G.model_config_kwargs(v, V, "float32")

        base, net = build_lora_net(model_kw, v, work)
        names = [p.name for p in net.get_parameters()]
        if set(names) != set(params) | set(lora):
            raise RuntimeError(f"{name}: LoRA network parameters differ: net-only "
                               f"{sorted(set(names) - set(params) - set(lora))[:4]}, ours-only "
                               f"{sorted((set(params) | set(lora)) - set(names))[:4]}")
        G.load_params(net, {**params, **lora})
        mf = G.mindformers_logits(net, ids, V, G.SEQ_LENGTH)
        ref = G.numpy_forward(v, merged_hf(v, w, params, lora), ids)
        diff = float(np.max(np.abs(mf.astype(np.float64) - ref)))
        scale = float(np.max(np.abs(ref)))
        if not diff < 1e-4 * max(1.0, scale):
            raise RuntimeError(f"{name}: MindFormers LoRA vs NumPy merged max |diff| {diff:.3g} (max {scale:.3g})")
        base_ref = G.numpy_forward(v, w, ids)
        moved = float(np.max(np.abs(base_ref - ref))) / scale
        unscaled = merged_hf(v, w, params, {k: (a / (ALPHA / RANK) if k.endswith("_b") else a)
                                           for k, a in lora.items()})
        unscaled_moved = float(np.max(np.abs(G.numpy_forward(v, unscaled, ids) - ref))) / scale
        if not (moved > 0.2 and unscaled_moved > 0.1):
            raise RuntimeError(f"{name}: LoRA moves the logits by {moved:.3g}, the scale by {unscaled_moved:.3g}")

        np.save(vdir / "logits.npy", mf)
        (vdir / "tokens.json").write_text(json.dumps({"text": G.TEXT, "ids": ids}, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        doc_kw = dict(model_kw, pet_config=pet_config(v))
        G.write_config_yaml(vdir / "config.yaml", name, v, doc_kw)
        text = (vdir / "config.yaml").read_text(encoding="utf-8")
        text = text.replace("tests/gen_llama_fixtures.py", "tests/gen_lora_fixtures.py").replace(
            "../tokenizer/tokenizer.model", "../../llama/tokenizer/tokenizer.model")
        (vdir / "config.yaml").write_text(text, encoding="utf-8")
        G.save_ckpt(net, vdir / "model.ckpt", work)

        # the trainable parameters only, as CheckpointMonitor(save_trainable_params=True) writes them
        trainable = [p.name for p in net.trainable_params()]
        if sorted(trainable) != sorted(lora):
            raise RuntimeError(f"{name}: trainable parameters are not exactly the LoRA ones: {trainable[:6]}")
        G.save_ckpt(net.trainable_params(), vdir / "lora" / "lora.ckpt", work)
        written = list(Path(work / "mf_output").rglob("adapter_config.json")) + \
            list(Path(work).glob("output/adapter_config.json"))
        if not written:
            raise RuntimeError("MindFormers' PetModel wrote no adapter_config.json")
        shutil.copyfile(max(written, key=lambda p: p.stat().st_mtime), vdir / "lora" / "adapter_config.json")
        (vdir / "lora" / "adapter_config.json").chmod(0o644)

        if v["base"]:
            plain = G.build_net(model_kw)
            G.load_params(plain, params)
            np.save(vdir / "base_logits.npy", G.mindformers_logits(plain, ids, V, G.SEQ_LENGTH))
            G.save_ckpt(plain, vdir / "base.ckpt", work)

        back = G.read_ckpt(vdir / "model.ckpt")
        for pname, (_, val) in back.items():
            assert np.array_equal(val, {**params, **lora}[pname]), pname
        report[name] = dict(max_abs_diff=diff, max_abs_logit=scale, lora_moves=moved, scale_moves=unscaled_moved,
                            lora=[(k, list(a.shape)) for k, a in lora.items()][:4], n_lora=len(lora))
    return report


MCORE_TARGETS = r".*linear_qkv|.*linear_proj|.*linear_fc1|.*linear_fc2"


def generate_mcore(out_dir: Path, work: Path) -> dict:
    """mcore/model.ckpt: the qwen3/tied fixture's weights in a real TrainingQwen3ForCausalLM wrapped by
    get_pet_model (parallel_core's ColumnParallelLinearWithLoRA / RowParallelLinearWithLoRA: lora_A.weight
    [r, in], lora_B.weight [out, r]) and saved by it. The mcore network does not run on CPU, so there are no
    logits; the tests compare the merged GGUF with base GGUF + adapter in llama.cpp, and with the weights merged in
    NumPy."""
    import mindspore as ms
    from mindformers.core.context.build_context import build_context
    from mindformers.pet import get_pet_model

    import gen_qwen_fixtures as Q

    build_context({"context": {"mode": 0, "device_target": "CPU"}, "use_legacy": False, "run_mode": "train",
                   "parallel": {}})
    source = HERE / "fixtures" / "qwen3" / "tied"
    base = {n: v for n, (_, v) in G.read_ckpt(source / "model.ckpt").items()}
    net, _ = Q.qwen3_net(Q.MCORE["qwen3/tied"], 0)
    lnet = get_pet_model(net, {"pet_type": "lora", "lora_rank": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                               "target_modules": MCORE_TARGETS, "freeze_include": ["*"],
                               "freeze_exclude": ["*lora*"]})
    rs = np.random.RandomState(1503)
    params = dict(base)
    for p in lnet.get_parameters():
        if ".lora_A." in p.name:
            params[p.name] = rs.normal(0, 1 / np.sqrt(p.shape[1]), tuple(p.shape)).astype(np.float32)
        elif ".lora_B." in p.name:
            params[p.name] = rs.normal(0, 0.1 / np.sqrt(RANK), tuple(p.shape)).astype(np.float32)
    names = {p.name for p in lnet.get_parameters()}
    if names != set(params):
        raise RuntimeError(f"mcore LoRA network: net-only {sorted(names - set(params))[:4]}, ours-only "
                           f"{sorted(set(params) - names)[:4]}")
    for p in lnet.get_parameters():
        p.set_data(ms.Tensor(params[p.name], dtype=p.dtype))
    vdir = out_dir / "mcore"
    vdir.mkdir(parents=True, exist_ok=True)
    G.save_ckpt(lnet, vdir / "model.ckpt", work)
    shutil.copyfile(source / "config.json", vdir / "config.json")
    shutil.copyfile(source / "tokens.json", vdir / "tokens.json")
    written = list(Path(work / "mf_output").rglob("adapter_config.json")) + \
        list(Path(work).glob("output/adapter_config.json"))
    if not written:
        raise RuntimeError("MindFormers' PetModel wrote no adapter_config.json")
    shutil.copyfile(max(written, key=lambda p: p.stat().st_mtime), vdir / "adapter_config.json")
    (vdir / "adapter_config.json").chmod(0o644)
    trainable = sorted(p.name for p in lnet.trainable_params())
    back = G.read_ckpt(vdir / "model.ckpt")
    assert all(np.array_equal(v, params[n]) for n, (_, v) in back.items())
    return {"mcore": dict(lora=[(n, list(params[n].shape)) for n in trainable[:4]], n_lora=len(trainable),
                          trainable_are_lora=all("lora_" in n for n in trainable))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--mcore", action="store_true", help="only the mcore fixture (run in its own process by "
                    "default: MindFormers' mcore context is graph mode)")
    args = ap.parse_args(argv)
    out_dir = args.out.resolve()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_lora_fixtures_") as tmp:
        G.setup_environment(Path(tmp))
        try:
            report = generate_mcore(out_dir, Path(tmp)) if args.mcore else generate(out_dir, Path(tmp))
        finally:
            import os
            os.chdir(cwd)
    if not args.mcore:
        import subprocess
        subprocess.run([sys.executable, __file__, "--out", str(out_dir), "--mcore"], check=True)
    print(json.dumps(report, indent=1))
    for f in sorted(out_dir.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(out_dir)}  {f.stat().st_size} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
