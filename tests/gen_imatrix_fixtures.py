"""Make tests/fixtures/imatrix/: importance matrices and what the real llama-quantize does with them.

For two tiny models (a MindFormers legacy Llama with 8 layers and GQA 4, and an mcore Qwen3-MoE with 4 experts,
their checkpoints made by tests/gen_policy_tables.py's ``build`` from a fixed seed, converted to F16 by ms2gguf):

* ``<model>.imatrix.gguf`` — an imatrix in llama.cpp's GGUF format (``general.type = imatrix``, ``imatrix.*``
  keys, ``<tensor>.in_sum2`` / ``<tensor>.counts`` per expert), written with gguf-py as llama.cpp's
  ``convert_legacy_imatrix_to_gguf.py`` does (no architecture key).  Σx² are heavy-tailed random values; every
  ``blk.*`` matrix and ``output.weight`` has an entry except ``blk.1.attn_q.weight`` (llama-quantize then
  quantizes it without); in the MoE model one expert of ``blk.0.ffn_up_exps`` saw no token (its weights are 1);
* ``dense.imatrix.dat`` — the same matrix in the legacy format (value = Σx², ncall = the count, so both give
  the same weights);
* ``truth.json`` — for each model and preset (every K-quant preset, q4_0, q4_1, q5_0, q5_1, q8_0): the type and
  the SHA-256 (first 16 hex digits) of the bytes of every tensor, and the ``quantize.imatrix.*`` keys, as written by llama.cpp's
  ``llama_model_quantize`` given this imatrix the way llama-quantize passes it (tests/gen_quant_tables.py, run in
  a venv with llama-cpp-python built from its PyPI sdist).

    python tests/gen_imatrix_fixtures.py [--lcpp-python /work/venvs/lcpp/bin/python]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "imatrix"
sys.path.insert(0, str(HERE))

PRESETS = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
           "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
MODELS = {
    "dense": dict(family="llama2", layers=8, H=256, nh=8, nkv=2, F=512, V=480, E=0),
    "qwen3moe": dict(family="qwen3_moe", layers=4, H=256, nh=4, nkv=2, hd=64, F=256, V=512, E=4, k=2),
}
DATASET = "calibration.txt"
CHUNKS, CHUNK_SIZE = 12, 512
LEFT_OUT = "blk.1.attn_q.weight"


def imatrix_entries(gguf_path, seed):
    """{name: (in_sum2 [n_mat, n_per_row], counts [n_mat])} for the matrices llama-imatrix would see."""
    from gguf import GGUFReader

    rng = np.random.default_rng(seed)
    entries = {}
    for t in GGUFReader(gguf_path).tensors:
        name = t.name
        if len(t.shape) < 2 or not name.endswith(".weight") or "norm" in name or name == LEFT_OUT:
            continue
        if not (name.startswith("blk.") or name == "output.weight"):
            continue
        n_per_row = int(t.shape[0])
        n_mat = int(t.shape[2]) if len(t.shape) == 3 else 1
        counts = rng.integers(1, 4, n_mat).astype(np.float32) * CHUNK_SIZE
        if name == "blk.0.ffn_up_exps.weight":
            counts[1] = 0
        if n_mat == 1:
            counts[:] = CHUNKS * CHUNK_SIZE
        mean_sq = (rng.random((n_mat, n_per_row)) ** 4 * 3 + 1e-3).astype(np.float32)
        entries[name] = ((mean_sq * counts[:, None]).astype(np.float32), counts)
    return entries


def write_gguf_imatrix(path, entries):
    import gguf

    class IMatrixWriter(gguf.GGUFWriter):
        def add_architecture(self):       # imatrix files have no general.architecture
            pass

    w = IMatrixWriter(path=str(path), arch="")
    w.add_type(gguf.GGUFType.IMATRIX)
    w.add_array(gguf.Keys.IMatrix.DATASETS, [DATASET])
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, CHUNKS)
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, CHUNK_SIZE)
    for name in sorted(entries):
        sums, counts = entries[name]
        w.add_tensor(f"{name}.in_sum2", sums)
        w.add_tensor(f"{name}.counts", counts.reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy_imatrix(path, entries):
    """imatrix.dat: value = Σx² and ncall = count, so value / ncall is the GGUF form's in_sum2 / count."""
    out = [struct.pack("<i", len(entries))]
    for name in sorted(entries):
        sums, counts = entries[name]
        if len(set(counts.tolist())) != 1:
            raise SystemExit(f"{name}: the legacy format has one count per tensor")
        raw = name.encode()
        out.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", int(counts[0]), sums.size))
        out.append(sums.astype("<f4").tobytes())
    out.append(struct.pack("<i", CHUNKS) + struct.pack("<i", len(DATASET)) + DATASET.encode())
    Path(path).write_bytes(b"".join(out))


def describe(path):
    """{tensors: {name: [type, sha256 prefix]}, kvs: {quantize.imatrix.*: [gguf value type, value]}}"""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: [GGMLQuantizationType(t.tensor_type).name, hashlib.sha256(t.data.tobytes()).hexdigest()[:16]]
               for t in reader.tensors}
    kvs = {}
    for key, field in reader.fields.items():
        if key.startswith("quantize."):
            kvs[key] = [field.types[0].name, field.contents()]
    return {"tensors": tensors, "kvs": kvs}


def lent_packages(work):
    """An environment whose PYTHONPATH lends the llama-cpp-python venv this interpreter's gguf-py (and what it
    imports), without the rest of this venv."""
    import importlib
    import os

    lent = work / "lent"
    if not lent.exists():
        lent.mkdir()
        for module in ("gguf", "yaml", "tqdm"):
            (lent / module).symlink_to(Path(importlib.import_module(module).__file__).parent)
    return dict(os.environ, PYTHONPATH=str(lent))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lcpp-python", default="/work/venvs/lcpp/bin/python",
                    help="python of a venv with llama-cpp-python (default: %(default)s)")
    args = ap.parse_args(argv)
    from gen_policy_tables import build

    OUT.mkdir(parents=True, exist_ok=True)
    truth = {"made_by": "tests/gen_imatrix_fixtures.py: llama_model_quantize of llama-cpp-python 0.3.36 (llama.cpp "
                        "0c1e57098) with the imatrix loaded as tools/quantize/quantize.cpp does",
             "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed, (name, m) in enumerate(MODELS.items()):
            f16 = build(name, m, work)
            entries = imatrix_entries(f16, seed)
            imatrix = OUT / f"{name}.imatrix.gguf"
            write_gguf_imatrix(imatrix, entries)
            if name == "dense":
                write_legacy_imatrix(OUT / f"{name}.imatrix.dat", entries)
            keep = work / f"{name}-q"
            subprocess.run([args.lcpp_python, str(HERE / "gen_quant_tables.py"), str(f16), "--presets",
                            ",".join(PRESETS), "--imatrix", imatrix.name, "--out", str(work / f"{name}.json"),
                            "--keep", str(keep), "--threads", "2"], check=True, cwd=OUT, env=lent_packages(work))
            truth["models"][name] = {"model": m, "imatrix": imatrix.name,
                                     "presets": {p: describe(keep / f"{p}.gguf") for p in PRESETS}}
            print(f"{name}: {len(entries)} imatrix entries, {len(PRESETS)} presets")
    (OUT / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
