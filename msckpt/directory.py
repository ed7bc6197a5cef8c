"""Checkpoints spread over a directory: MindFormers Checkpoint 2.0 saves (``iteration_*/``), per-rank shards
(``rank_N/``) or several ``.safetensors`` files."""

from pathlib import Path

from .errors import CheckpointError


def open_directory(path, **options):
    from . import iteration

    folder = Path(path)
    ranked = any(p.is_dir() and p.name.startswith("rank_") for p in folder.iterdir())
    if iteration.is_root(folder):
        if ranked:
            raise CheckpointError(path, "holds both rank_*/ (legacy) and iteration_*/ (Checkpoint 2.0) saves; pass "
                                  "one iteration_*/ directory, or move the rank_*/ tree into a directory of its own")
        return iteration.open_iteration(path, **options)
    if ranked:
        from .distributed import open_distributed
        return open_distributed(path, **_without(options, "optimizer"))
    if iteration.is_iteration(folder):
        return iteration.open_iteration(path, **options)
    from .distributed import EXTENSIONS, is_rank_dir, open_rank_dir
    if is_rank_dir(folder) and any(p.suffix in EXTENSIONS for p in folder.iterdir()):
        return open_rank_dir(path, **_without(options, "optimizer"))
    if any(folder.glob("*.safetensors")):
        from .multifile import open_safetensors_dir
        return open_safetensors_dir(path)
    raise CheckpointError(path, "is a directory, not a checkpoint file (expected iteration_*/ or rank_*/ saves, or "
                          "*.safetensors files)")


def _without(options, *names):
    return {k: v for k, v in options.items() if k not in names}
