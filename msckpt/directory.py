"""Checkpoints spread over a directory: per-rank shards (``rank_N/``) or several ``.safetensors`` files."""

from pathlib import Path

from .errors import CheckpointError


def open_directory(path, **options):
    folder = Path(path)
    if any(p.is_dir() and p.name.startswith("rank_") for p in folder.iterdir()):
        from .distributed import open_distributed
        return open_distributed(path, **options)
    if any(folder.glob("*.safetensors")):
        from .multifile import open_safetensors_dir
        return open_safetensors_dir(path)
    raise CheckpointError(path, "is a directory, not a checkpoint file (expected rank_*/ shards or "
                          "*.safetensors files)")
