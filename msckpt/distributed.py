"""A distributed checkpoint directory (``rank_N/`` shards + strategy) read as one checkpoint.

Each rank file holds its shards under the full parameter names; the strategy says where each shard sits
(ckpt-format.md §11). Nothing is merged up front: a parameter becomes a MergedTensor that knows which shard
covers which block of the full tensor, and reads shards (through each rank's streaming reader, kept open) only
when asked, so at most one full tensor - or just a band of its rows - is in memory at a time.
"""

import re
from pathlib import Path

from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError
from .source import ensure_open_files
from .strategy import load_strategy
from .tiled import TiledTensor

_RANK_DIR = re.compile(r"^rank_(\d+)$")
_STEP_SUFFIX = re.compile(r"-(\d+)_(\d+)$")       # MindSpore / MindFormers: <prefix>-<epoch>_<step>.ckpt
EXTENSIONS = (".ckpt", ".safetensors")


def rank_dirs(folder):
    """{rank: directory} for the ``rank_<N>`` subdirectories of ``folder``."""
    out = {}
    for p in Path(folder).iterdir():
        m = _RANK_DIR.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return out


def is_distributed(folder):
    return bool(rank_dirs(folder))


def find_strategy(folder, required=True):
    """The strategy beside the shards: ``CKPT_DIR/strategy*`` or MindFormers' ``CKPT_DIR/../strategy/`` (None when
    there is none and it is not ``required``)."""
    folder = Path(folder)
    here = sorted(p for p in folder.iterdir()
                  if p.name.startswith("strategy") and (p.is_dir() or p.suffix in (".ckpt", ".json")))
    if len(here) > 1:
        raise CheckpointError(folder, f"several strategy candidates ({', '.join(p.name for p in here)}); pass "
                              "--strategy FILE_OR_DIR")
    if here:
        return here[0]
    up = folder.absolute().parent / "strategy"
    if up.is_dir():
        return up
    if not required:
        return None
    raise CheckpointError(folder, "is a distributed checkpoint (rank_*/) but no strategy file was found (looked "
                          "for strategy* inside it and for ../strategy/); pass --strategy FILE_OR_DIR")


def open_distributed(path, strategy=None, step=None, dec_key=None, dec_mode="AES-GCM", verify_crc=False,
                     tmp_dir=None):
    """Open ``path/rank_N/*.ckpt`` as one checkpoint whose sharded parameters are MergedTensors.

    ``strategy``: strategy file or directory (default: found beside the shards; a lone ``rank_0/`` needs none).
    ``step``: which saved step to read when a rank directory holds several (``N`` or ``EPOCH_N``; default: the
    newest all ranks have).
    """
    folder = Path(path)
    ranks = rank_dirs(folder)
    if not ranks:
        raise CheckpointError(folder, "has no rank_<N>/ directories")
    options = dict(dec_key=dec_key, dec_mode=dec_mode, verify_crc=verify_crc, tmp_dir=tmp_dir)
    strategy_path = Path(strategy) if strategy is not None else find_strategy(folder, required=set(ranks) != {0})
    if strategy_path is None:
        # a single-card save in the rank layout: rank_0's file holds whole tensors
        files, label = pick_files(folder, ranks, step)
        ckpt = open_checkpoint(files[0], **options)
        return DistributedCheckpoint(folder, list(ckpt.tensors), None, files, {0: ckpt}, label,
                                     saved_steps(folder, ranks))
    strat = load_strategy(strategy_path)
    expected = strat.devices
    missing = [r for r in range(expected) if r not in ranks]
    extra = sorted(r for r in ranks if r >= expected)
    shape = f"{len(strat.stages)} stage(s) x {strat.stage_devices} devices"
    if missing:
        raise CheckpointError(folder, f"rank_{missing[0]}/ is missing{_more(missing, 'rank_')} (the strategy "
                              f"{strategy_path} describes {expected} ranks: {shape})")
    if extra:
        raise CheckpointError(folder, f"holds rank_{extra[0]}/{_more(extra, 'rank_')} but the strategy "
                              f"{strategy_path} describes only {expected} ranks ({shape}); is a pipeline "
                              "stage's strategy file missing?")
    files, label = pick_files(folder, ranks, step)
    ensure_open_files(expected)
    ckpts = {}
    try:
        for rank in range(expected):
            ckpts[rank] = open_checkpoint(files[rank], **options)
        tensors = _assemble(strat, ckpts, files)
    except BaseException:
        for ckpt in ckpts.values():
            ckpt.close()
        raise
    return DistributedCheckpoint(folder, tensors, strat, files, ckpts, label, saved_steps(folder, ranks))


def open_rank_dir(path, step=None, strategy=None, **options):
    """One ``rank_N/`` directory of a single-card run in the rank layout (MindFormers' ``rank_0/``): the newest
    saved step (or ``step``) of its files, whole tensors. One rank of a multi-rank tree is only a shard of it."""
    folder = Path(path).absolute()
    rank = int(_RANK_DIR.match(folder.name).group(1))
    others = sorted(r for r in rank_dirs(folder.parent) if r != rank)
    if others or strategy is not None:
        raise CheckpointError(folder, f"is one rank of a distributed save (rank_{', rank_'.join(map(str, others))} "
                              f"beside it); pass the directory holding the rank_N/ directories, {folder.parent}"
                              if others else "is one rank directory; --strategy applies to the directory holding "
                              "the rank_N/ directories")
    files, label = pick_files(folder.parent, {rank: folder}, step)
    ckpt = open_checkpoint(files[rank], **options)
    return DistributedCheckpoint(folder, list(ckpt.tensors), None, files, {rank: ckpt}, label,
                                 saved_steps(folder.parent, {rank: folder}))


def is_rank_dir(folder):
    return bool(_RANK_DIR.match(Path(folder).absolute().name))


def _more(items, prefix):
    return f" (and {', '.join(f'{prefix}{i}' for i in items[1:4])}{', ...' if len(items) > 4 else ''})" \
        if len(items) > 1 else ""


def _step_of(file):
    m = _STEP_SUFFIX.search(file.stem)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _parse_step(step, folder):
    text = str(step).strip()
    m = re.fullmatch(r"(?:(\d+)_)?(\d+)", text)
    if not m:
        raise CheckpointError(folder, f"bad step {step!r}: give N or EPOCH_N (from <prefix>-EPOCH_N.ckpt)")
    return (int(m.group(1)) if m.group(1) else None, int(m.group(2)))


def _step_text(key):
    return f"{key[0]}_{key[1]}" if key else "unnumbered"


def _rank_files(d):
    from .safeio import regular_entries
    return sorted(regular_entries((p for p in d.iterdir() if p.suffix in EXTENSIONS), what="checkpoint"))


def saved_steps(folder, ranks):
    """The "EPOCH_STEP" labels every rank directory holds a checkpoint for, oldest first (what --step accepts)."""
    common = set.intersection(*({_step_of(f) for f in _rank_files(d)} for d in ranks.values()))
    return [_step_text(key) for key in sorted(k for k in common if k)]


def pick_files(folder, ranks, step=None):
    """({rank: file}, "EPOCH_STEP" or None): the checkpoint each rank directory contributes."""
    per_rank = {}
    for rank, d in sorted(ranks.items()):
        files = _rank_files(d)
        if not files:
            raise CheckpointError(d, "holds no .ckpt or .safetensors checkpoint")
        per_rank[rank] = {f: _step_of(f) for f in files}

    def one(rank, matches, what):
        if len(matches) > 1:
            raise CheckpointError(ranks[rank], f"holds several checkpoints for {what} "
                                  f"({', '.join(f.name for f in matches)}); keep one")
        return matches[0]

    if step is not None:
        epoch, number = _parse_step(step, folder)
        chosen = {}
        for rank, files in per_rank.items():
            matches = [f for f, k in files.items() if k and k[1] == number and epoch in (None, k[0])]
            if not matches:
                found = ", ".join(_step_text(k) for k in files.values())
                raise CheckpointError(ranks[rank], f"has no checkpoint for step {step} (found: {found})")
            chosen[rank] = one(rank, matches, f"step {step} (pass --step EPOCH_N)")
        return chosen, _step_text(_step_of(chosen[0]))

    if all(len(files) == 1 for files in per_rank.values()):
        chosen = {rank: next(iter(files)) for rank, files in per_rank.items()}
        keys = {rank: _step_of(f) for rank, f in chosen.items()}
        for rank, key in keys.items():
            if key != keys[0]:
                raise CheckpointError(folder, f"ranks hold different steps: {chosen[0].name} in rank_0/ but "
                                      f"{chosen[rank].name} in rank_{rank}/")
        return chosen, (_step_text(keys[0]) if keys[0] else None)

    for rank, files in per_rank.items():
        if len(files) > 1 and any(k is None for k in files.values()):
            raise CheckpointError(ranks[rank], f"holds several checkpoints ({', '.join(f.name for f in files)}) "
                                  "not all named <prefix>-<epoch>_<step>; keep one or pass --step")
    common = set.intersection(*(set(files.values()) for files in per_rank.values()))
    if not common:
        raise CheckpointError(folder, "the rank directories have no saved step in common; pass --step")
    newest = max(common)
    chosen = {rank: one(rank, [f for f, k in files.items() if k == newest], f"step {_step_text(newest)}")
              for rank, files in per_rank.items()}
    return chosen, _step_text(newest)


def _assemble(strat, ckpts, files):
    """The checkpoint's entries in rank 0's order (then entries only later ranks hold)."""
    by_rank = {rank: {t.name: t for t in ckpt} for rank, ckpt in ckpts.items()}
    order = {}
    for rank in sorted(ckpts):
        for t in ckpts[rank]:
            order.setdefault(t.name, rank)
    out = []
    for name in order:
        layout = strat.get(name)
        if layout is not None:
            out.append(_merged(name, layout, strat, by_rank, files))
            continue
        # not sharded: identical on every rank holding it (global_step, learning_rate, ...); take rank 0's
        holders = [rank for rank in sorted(by_rank) if name in by_rank[rank]]
        if holders[0] != 0:
            raise CheckpointError(files[holders[0]], f"'{name}' is neither in the strategy nor in rank_0/; is a "
                                  "pipeline stage's strategy file missing?")
        first = by_rank[0][name]
        for rank in holders[1:]:
            t = by_rank[rank][name]
            if t.shape != first.shape or t.dtype != first.dtype:
                raise CheckpointError(files[rank], f"'{name}' is not in the strategy, so it should be the same on "
                                      f"every rank, but it is {_what(t)} here and {_what(first)} in {files[0]}")
        out.append(first)
    return out


def _what(t):
    return f"{t.dtype.name if t.dtype else t.kind} {list(t.shape)}"


def _merged(name, layout, strat, by_rank, files):
    """A MergedTensor: shard shapes checked against the layout, each block of the full tensor taken from a rank
    that holds it.

    A block is a (model-parallel slice, optimizer piece) pair; every rank whose coordinates give the same pair holds
    the same bytes. Normal saves write each block on all of them; saves with ``remove_redundancy=True`` on exactly
    one (MindSpore's ``remove_param_redundancy`` deals each replica group's parameters out round-robin), so any
    rank of the group that has the name will do, and it is an error only when none has it.
    """
    devices = strat.stage_devices
    first_rank = layout.stage * devices
    reason = layout.unsupported()
    if reason:
        raise CheckpointError(layout.source, f"parameter '{name}': {reason}")
    held = {local: by_rank[first_rank + local][name] for local in range(devices)
            if name in by_rank[first_rank + local]}
    if not held:
        raise CheckpointError(files[first_rank], f"has no '{name}', which the strategy places on pipeline stage "
                              f"{layout.stage} (ranks {first_rank}-{first_rank + devices - 1}), and no other rank of "
                              "that stage has it either")
    first_local = min(held)
    first = held[first_local]
    first_file = files[first_rank + first_local]
    if first.kind != "tensor":
        raise CheckpointError(first_file, f"'{name}' is a {first.kind} entry but the strategy lays it out as a tensor")
    for local, t in held.items():
        if t.shape != first.shape or t.dtype != first.dtype:
            raise CheckpointError(files[first_rank + local], f"shard of '{name}' is {_what(t)} here but "
                                  f"{_what(first)} in {first_file}; all shards of a parameter must have the same shape")
    shape = tuple(first.shape)
    if len(shape) != len(layout.tensor_map):
        raise CheckpointError(layout.source, f"parameter '{name}': tensor map {layout.map_text()} has "
                              f"{len(layout.tensor_map)} axes but the shard in {first_file} has "
                              f"{len(shape)} ({list(shape)})")
    size, step = layout.opt_size, layout.opt_shard_step
    if size > 1 and (not shape or layout.replicas % size):
        raise CheckpointError(layout.source, f"parameter '{name}': optimizer shard size {size} does not fit "
                              f"{layout.replicas} replica(s) of a {len(shape)}-axis tensor ({layout.describe()})")
    full = [n * p for n, p in zip(shape, layout.parts)]
    if full:
        full[0] *= size
    if layout.full_shape is not None and tuple(full) != tuple(layout.full_shape):
        raise CheckpointError(layout.source, f"parameter '{name}': the strategy gives tensor_shape "
                              f"{list(layout.full_shape)} but its shards ({list(shape)} in {first_file}) "
                              f"merge to {full}")

    blocks = {}          # (slice index, optimizer piece) -> the stage-local ranks holding that block, in rank order
    for local in range(devices):
        index = layout.slice_index(local)
        piece = layout.opt_piece(local) if size > 1 else 0
        if size > 1:
            # the slice is the axis-0 concatenation of the optimizer shard group's pieces (§11.4 step 1)
            base = local - piece * step
            for i in range(size):
                member = base + i * step
                if not (0 <= member < devices and layout.slice_index(member) == index):
                    raise CheckpointError(layout.source, f"parameter '{name}': the optimizer shard group of rank "
                                          f"{first_rank + local} ({layout.describe()}) would include rank "
                                          f"{first_rank + member}, which does not hold the same model-parallel "
                                          "slice")
        blocks.setdefault((index, piece), []).append(local)
    tiles = []
    for (index, piece), members in blocks.items():
        holder = next((m for m in members if m in held), None)
        if holder is None:
            others = ", ".join(f"rank_{first_rank + m}" for m in members)
            raise CheckpointError(files[first_rank + members[0]], f"has no '{name}', and no other rank holding the "
                                  f"same block of it ({others}) has it either")
        offset = tuple(i * n for i, n in zip(index, shape))
        if shape:
            offset = (offset[0] * size + piece * shape[0],) + offset[1:]
        tiles.append((held[holder], offset))
    return MergedTensor(name, first.dtype, tuple(full), layout, tiles,
                        ranks=[first_rank + r for r in range(devices)])


class MergedTensor(TiledTensor):
    """A parameter assembled from shards in several rank files (tiles: shard Tensor, offset of its block)."""

    def __init__(self, name, dtype, shape, layout, tiles, ranks=()):
        super().__init__(name, dtype, shape, tiles)
        self.layout = layout
        self.ranks = list(ranks)

    def __repr__(self):
        return f"MergedTensor({self.name!r}, {self.dtype.name}, {list(self.shape)}, {self.layout.describe()})"

    @property
    def shard_shape(self):
        return tuple(self.tiles[0][0].shape)


class DistributedCheckpoint(Checkpoint):
    """The merged view of a ``rank_N/`` directory; closes every rank file on ``close()``."""

    def __init__(self, folder, tensors, strategy, files, ckpts, step, steps=()):
        sources = [s for ckpt in ckpts.values() for s in ckpt.sources]
        super().__init__(folder, None, "distributed", tensors, sources=sources)
        self.strategy = strategy         # None for a lone rank_0/ (whole tensors)
        self.rank_files = files          # {rank: path of the checkpoint read}
        self.rank_checkpoints = ckpts    # {rank: open Checkpoint}
        self.step = step                 # "EPOCH_STEP" of the files read, or None
        self.steps = list(steps)         # every "EPOCH_STEP" all ranks hold (the values --step accepts)
        # MindSpore marks de-duplicated safetensors saves in their metadata (.ckpt files carry no such mark)
        self.deduplicated = any(c.metadata.get("remove_redundancy") == "True" for c in ckpts.values())
        self.encrypted = next((c.encrypted for c in ckpts.values() if c.encrypted), None)

    def layout_of(self, name):
        t = self.get(name)
        return t.layout if isinstance(t, MergedTensor) else None

    def train_tp_hint(self, names):
        """Tensor-parallel degree of training as the strategy shows it: how many model-parallel blocks the
        rows (axis 0) of the given fused tensors are split into. None when none of them is split-mapped."""
        splits = {}
        for name in names:
            layout = self.layout_of(name)
            if layout is not None and layout.tensor_map:
                splits[name] = layout.parts[0]
        if not splits:
            return None
        values = sorted(set(splits.values()))
        if len(values) > 1:
            examples = ", ".join(f"'{n}' {p}" for n, p in list(splits.items())[:4])
            raise CheckpointError(self.path, f"fused tensors have their rows split into different numbers of "
                                  f"blocks ({examples}); pass --train-tp")
        return values[0]

    def distributed_info(self):
        """JSON-ready facts for ``ms2gguf inspect``: ranks, strategy, and each sharded parameter's layout."""
        rank_of = {str(f): r for r, f in self.rank_files.items()}
        layouts = []
        for t in self.tensors:
            if not isinstance(t, MergedTensor):
                continue
            lay = t.layout
            layouts.append({"name": t.name, "stage": lay.stage, "dev_matrix": list(lay.dev_matrix),
                            "tensor_map": lay.map_text(), "opt_shard_step": lay.opt_shard_step,
                            "opt_shard_size": lay.opt_shard_size, "replicas": lay.replicas,
                            "shard_shape": list(t.shard_shape), "shape": list(t.shape),
                            "read_from": sorted({rank_of[shard.source.path] for shard, _ in t.tiles})})
        strat = self.strategy
        return {
            "strategy": strat.path if strat else None,
            "strategy_files": [str(f) for f in strat.files] if strat else [],
            "stages": len(strat.stages) if strat else 1,
            "devices_per_stage": strat.stage_devices if strat else 1,
            "step": self.step,
            "steps": self.steps,
            "deduplicated": self.deduplicated,
            "ranks": [{"rank": r, "file": str(f), "size": self.rank_checkpoints[r].file_size}
                      for r, f in sorted(self.rank_files.items())],
            "unsharded": [t.name for t in self.tensors if not isinstance(t, MergedTensor)],
            "layouts": layouts,
        }
