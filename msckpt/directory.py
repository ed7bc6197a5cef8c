"""Checkpoints spread over a directory: per-rank shards (``rank_N/``) or several ``.safetensors`` files."""

from pathlib import Path

from .errors import CheckpointError


def open_directory(path, **options):
    folder = Path(path)
    if any(p.is_dir() and p.name.startswith("rank_") for p in folder.iterdir()):
        raise CheckpointError(path, "is a distributed checkpoint directory (rank_*/); merging shards is not "
                              "supported yet")
    if any(folder.glob("*.safetensors")):
        raise CheckpointError(path, "is a directory of safetensors files; reading several files as one "
                              "checkpoint is not supported yet")
    raise CheckpointError(path, "is a directory, not a checkpoint file (expected rank_*/ shards or "
                          "*.safetensors files)")
