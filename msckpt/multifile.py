"""A directory of whole-tensor ``.safetensors`` shards read as one checkpoint.

Such directories come from HF-style exports (``model-00001-of-00002.safetensors`` + ``model.safetensors.index.json``),
from MindFormers' HF -> MindFormers converter (the same shard names + ``param_name_map.json``, a flat name -> file
map) and from ``mindspore.ckpt_to_safetensors`` run on several files (no index). Every tensor lies whole in one
file and keeps that file as its ``source``, so byte ranges stay valid and raw copies still work. MindFormers 2.1's
``iteration_*/`` layout, whose tensors are split into chunks described by ``metadata.json``, is a different format.
"""

import os
from pathlib import Path

from . import safetensors
from .checkpoint import Checkpoint
from .errors import CheckpointError
from .safeio import load_json, present
from .source import Source

INDEX_NAMES = ("model.safetensors.index.json", "param_name_map.json")


def open_safetensors_dir(path):
    folder = Path(path)
    index, index_path = _read_index(folder)
    if index is None:
        files = sorted(folder.glob("*.safetensors"))
    else:
        files = [folder / name for name in sorted(set(index.values()))]
        for f in files:
            if not os.path.lexists(f):
                raise CheckpointError(index_path, f"names the file '{f.name}', which is not in {folder}")
    if not files:
        raise CheckpointError(path, "contains no .safetensors files")

    sources, tensors, where = [], [], {}
    try:
        for f in files:
            try:
                source = Source(f)
            except OSError as err:
                raise CheckpointError(f, f"cannot open: {err.strerror or err}") from None
            sources.append(source)
            if not safetensors.looks_like(source):
                raise CheckpointError(f, "is not a safetensors file", 0)
            for tensor in safetensors.index(source)[0]:
                if tensor.name in where:
                    raise CheckpointError(f, f"holds '{tensor.name}', which {where[tensor.name]} holds too")
                where[tensor.name] = f.name
                tensors.append(tensor)
        if index is not None:
            _check_index(index, index_path, where)
    except BaseException:
        for source in sources:
            source.close()
        raise
    # no checkpoint-wide CRC: MindSpore's crc_num covers one file, not the directory
    return Checkpoint(path, None, "safetensors", tensors, sources=sources)


def _read_index(folder):
    """({tensor name: file name}, index path) from the first index file present, else (None, None)."""
    for name in INDEX_NAMES:
        index_path = folder / name
        if not present(index_path):
            continue
        data = load_json(index_path, what="shard index")
        mapping = data.get("weight_map") if isinstance(data, dict) and "weight_map" in data else data
        if not (isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())):
            raise CheckpointError(index_path, "is not a shard index (expected a 'weight_map' of tensor name -> "
                                  "file name)")
        if any(Path(v).name != v for v in mapping.values()):
            raise CheckpointError(index_path, "names shard files outside its directory")
        return mapping, index_path
    return None, None


def _check_index(index, index_path, where):
    for name, file_name in index.items():
        if name not in where:
            raise CheckpointError(index_path, f"lists '{name}' in {file_name}, but no shard holds it")
        if where[name] != file_name:
            raise CheckpointError(index_path, f"puts '{name}' in {file_name}, but it is in {where[name]}")
    unlisted = [name for name in where if name not in index]
    if unlisted:
        raise CheckpointError(index_path, f"does not list '{unlisted[0]}' (in {where[unlisted[0]]})"
                              + (f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""))
