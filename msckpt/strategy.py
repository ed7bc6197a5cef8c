"""Parallel strategy files: how each parameter is laid out over the devices (ckpt-format.md §11.2-11.3).

A strategy is the protobuf ``mindspore.straspb.ParallelStrategyMap`` (or its JSON variant). With pipeline
parallelism every stage writes its own file; a directory of them is merged here, stage by stage, the way
``mindspore.merge_pipeline_strategys`` does (which also prefixes names with ``"<stage>-"``, understood too).
"""

import re
from dataclasses import dataclass
from math import prod
from pathlib import Path

from .errors import CheckpointError

_STAGE_PREFIX = re.compile(r"^(\d+)-(.+)$")     # names in merge_pipeline_strategys output: "<stage>-<name>"
_RANK_NUMBER = re.compile(r"(\d+)\D*$")


@dataclass(frozen=True)
class Layout:
    """Where one parameter's shards are: device matrix, tensor map, optimizer sharding, pipeline stage.

    ``tensor_map`` has one tuple per tensor axis listing the device dims that split it, outermost first, each
    counted from the right of ``dev_matrix`` as MindSpore does; ``()`` = not split. A Layout-style map
    (``nested``) may list several dims for one axis.
    """
    name: str
    dev_matrix: tuple
    tensor_map: tuple
    opt_shard_step: int = 0
    opt_shard_size: int = 0          # as stored: 0 = no optimizer sharding, -1 = over all replicas
    field: int = 0
    param_split_shape: tuple = ()
    stage: int = 0
    full_shape: tuple | None = None  # only JSON strategies record it
    nested: bool = False
    source: str = ""                 # the strategy file it came from

    @property
    def devices(self):
        return prod(self.dev_matrix)

    def _size(self, dim):
        return self.dev_matrix[len(self.dev_matrix) - 1 - dim]

    @property
    def parts(self):
        """Model-parallel blocks per tensor axis."""
        return tuple(prod(self._size(m) for m in axis) for axis in self.tensor_map)

    @property
    def opt_size(self):
        """Optimizer-shard group size S (1 when not sharded; -1 resolved to every replica)."""
        if not self.opt_shard_size:
            return 1
        if self.opt_shard_size == -1:
            return self.devices // prod(self.parts)
        return self.opt_shard_size

    @property
    def replicas(self):
        """Ranks holding the same model-parallel slice."""
        return self.devices // prod(self.parts)

    def coordinate(self, rank):
        """Row-major coordinate of a stage-local rank in the device matrix (last dim varies fastest)."""
        coord = []
        for size in reversed(self.dev_matrix):
            coord.append(rank % size)
            rank //= size
        return coord[::-1]

    def slice_index(self, rank):
        """Which model-parallel block of each axis ``rank`` holds (mixed radix over the axis's device dims)."""
        coord = self.coordinate(rank)
        index = []
        for axis in self.tensor_map:
            i = 0
            for m in axis:
                i = i * self._size(m) + coord[len(coord) - 1 - m]
            index.append(i)
        return tuple(index)

    def opt_piece(self, rank):
        """Which axis-0 piece of its model-parallel slice ``rank`` holds under optimizer sharding."""
        return (rank // self.opt_shard_step) % self.opt_size if self.opt_size > 1 else 0

    def map_text(self):
        if self.nested:
            return "[" + ", ".join("[" + ", ".join(map(str, axis)) + "]" if axis else "-1"
                                   for axis in self.tensor_map) + "]"
        return "[" + ", ".join(str(axis[0]) if axis else "-1" for axis in self.tensor_map) + "]"

    def describe(self):
        text = f"dev {list(self.dev_matrix)} map {self.map_text()}"
        if self.opt_shard_size:
            text += f" opt {self.opt_shard_step}/{self.opt_shard_size}"
        return text

    def unsupported(self):
        """Why this layout cannot be merged, or None."""
        if self.field > 0:
            return f"a field split (field {self.field}, embedding-specific) is not supported"
        if self.param_split_shape:
            return (f"an uneven manual split (param_split_shape {list(self.param_split_shape)}) is not "
                    "supported")
        return None


class Strategy:
    """Every parameter's Layout, merged over the pipeline stages."""

    def __init__(self, path, layouts, files):
        self.path = str(path)
        self.layouts = layouts           # {name: Layout}
        self.files = files               # the strategy files that were read
        self.stages = sorted({lay.stage for lay in layouts.values()})
        self.stage_devices = next(iter(layouts.values())).devices
        for lay in layouts.values():
            if lay.devices != self.stage_devices:
                first = next(iter(layouts.values()))
                raise CheckpointError(lay.source or path, f"parameters '{first.name}' and '{lay.name}' have device "
                                      f"matrices of {first.devices} and {lay.devices} devices; every stage must use "
                                      "the same number")
        if self.stages != list(range(len(self.stages))):
            raise CheckpointError(path, f"the strategy covers pipeline stages {self.stages}; stages "
                                  f"{sorted(set(range(self.stages[-1] + 1)) - set(self.stages))} are missing")

    @property
    def devices(self):
        return self.stage_devices * len(self.stages)

    def get(self, name):
        return self.layouts.get(name)

    def __contains__(self, name):
        return name in self.layouts

    def __len__(self):
        return len(self.layouts)


def load_strategy(path):
    """A Strategy from a strategy file (protobuf or ``.json``) or a directory of per-rank/per-stage files."""
    path = Path(path)
    if path.is_dir():
        from .safeio import regular_entries
        files = sorted(regular_entries((p for p in path.iterdir() if p.suffix in (".ckpt", ".json")
                                        and not p.is_dir()), what="strategy file"), key=_file_order)
        if not files:
            raise CheckpointError(path, "strategy directory holds no .ckpt or .json strategy files")
        kinds = {p.suffix for p in files}
        if len(kinds) > 1:
            raise CheckpointError(path, "strategy directory mixes .ckpt and .json files; keep one kind")
    elif path.is_file():
        files = [path]
    else:
        raise CheckpointError(path, "strategy file not found")

    layouts, seen_stages = {}, set()
    for file in files:
        stage, items = _read_file(file)
        if stage in seen_stages:
            continue                         # another rank of a stage already read (files repeat per rank)
        if stage is not None:
            seen_stages.add(stage)
        for lay in items:
            old = layouts.get(lay.name)
            if old is None or lay.stage < old.stage:    # a parameter shared by stages: the first stage's layout
                layouts[lay.name] = lay
    if not layouts:
        raise CheckpointError(path, "no parameter layouts (parallel_layout_item is empty); is this a parallel "
                              "strategy file?")
    return Strategy(path, layouts, files)


def _file_order(p):
    m = _RANK_NUMBER.search(p.stem)
    return (int(m.group(1)) if m else -1, p.name)


def _read_file(path):
    """(the file's pipeline stage or None when its names carry stage prefixes, [Layout])."""
    from .safeio import LARGE, read_bytes
    data = read_bytes(path, what="strategy file", limit=LARGE)
    if not data:
        raise CheckpointError(path, "strategy file is empty")
    if path.suffix == ".json":
        return _read_json(path, data)
    return _read_protobuf(path, data)


def _read_protobuf(path, data):
    from google.protobuf.message import DecodeError

    from .schema import message_class

    cls = message_class("node_strategy", "mindspore.straspb.ParallelStrategyMap")
    try:
        smap = cls.FromString(data)
    except DecodeError as err:
        raise CheckpointError(path, f"not a parallel strategy file (protobuf ParallelStrategyMap): {err}") from None
    stage = (smap.parallel_strategy_item[0].parallel_strategys.stage if smap.parallel_strategy_item
             else smap.current_stage)
    raw = []
    for item in smap.parallel_layout_item:
        if not isinstance(item.param_name, str):        # proto2 hands invalid UTF-8 back as bytes
            raise CheckpointError(path, f"parameter name {item.param_name[:60]!r} is not valid UTF-8")
        pl = item.parallel_layouts
        where = f"parameter '{item.param_name}'"
        if len(pl.dev_matrix) != 1:
            raise CheckpointError(path, f"{where}: expected one dev_matrix, found {len(pl.dev_matrix)}")
        maps = [list(t.dim) for t in pl.tensor_map]
        if len(maps) > 1:        # Layout style: one entry per axis; MindSpore drops the empty ones
            tensor_map, nested = [m for m in maps if m], True
        elif maps:
            tensor_map, nested = maps[0], False
        else:
            raise CheckpointError(path, f"{where}: no tensor_map")
        split = list(pl.param_split_shape[0].dim) if pl.param_split_shape else []
        raw.append((item.param_name, list(pl.dev_matrix[0].dim), tensor_map, nested, pl.opt_weight_shard_step,
                    pl.opt_weight_shard_size, pl.field, split, None))
    return _layouts(path, stage, raw)


def _read_json(path, data):
    from .safeio import parse_json
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(path, "strategy file is not valid UTF-8", err.start) from None
    doc = parse_json(text, path, what="strategy file")
    items = doc.get("parallel_layout_item") if isinstance(doc, dict) else None
    if not isinstance(items, dict):
        raise CheckpointError(path, "JSON strategy has no 'parallel_layout_item' object")
    stage = doc.get("current_stage", 0)
    strategies = doc.get("parallel_strategy_item")
    if isinstance(strategies, dict) and strategies:
        first = next(iter(strategies.values()))
        if isinstance(first, dict) and "stage" in first:
            stage = first["stage"]
    raw = []
    for name, item in items.items():
        if not isinstance(item, dict):
            raise CheckpointError(path, f"parameter '{name}': layout is not an object")
        tensor_map = item.get("tensor_map", [])
        nested = isinstance(tensor_map, list) and any(isinstance(t, list) for t in tensor_map)
        if nested:
            tensor_map = [t if isinstance(t, list) else [t] for t in tensor_map]
        shape = item.get("tensor_shape")
        raw.append((name, item.get("dev_matrix"), tensor_map, nested, item.get("opt_weight_shard_step", 0),
                    item.get("opt_weight_shard_size", 0), item.get("field", 0), item.get("param_split_shape", []),
                    tuple(shape) if isinstance(shape, list) else None))
    return _layouts(path, stage, raw)


MAX_DEVICES = 1 << 20      # devices per pipeline stage; loops and tables are sized by it


def _is_int(v):
    return type(v) is int


def _layouts(path, stage, raw):
    if not _is_int(stage) or stage < 0:
        raise CheckpointError(path, f"bad pipeline stage {stage!r}")
    out, prefixed = [], False
    for name, dev, tensor_map, nested, step, size, field, split, shape in raw:
        where = f"parameter '{name}'"
        param_stage = stage
        m = _STAGE_PREFIX.match(name)
        if m:                                 # merged by merge_pipeline_strategys
            param_stage, name, prefixed = int(m.group(1)), m.group(2), True
        if not (isinstance(dev, list) and dev and all(_is_int(d) and d > 0 for d in dev)):
            raise CheckpointError(path, f"{where}: bad dev_matrix {dev!r}")
        if prod(dev) > MAX_DEVICES:
            raise CheckpointError(path, f"{where}: dev_matrix {dev} means {prod(dev)} devices (at most {MAX_DEVICES})")
        if not isinstance(tensor_map, list):
            raise CheckpointError(path, f"{where}: bad tensor_map {tensor_map!r}")
        axes = []
        for axis in tensor_map:
            dims = axis if nested else [axis]
            if not all(_is_int(d) and -1 <= d < len(dev) for d in dims):
                raise CheckpointError(path, f"{where}: tensor_map {tensor_map!r} does not fit dev_matrix {dev}")
            axes.append(tuple(d for d in dims if d != -1))
        used = [d for axis in axes for d in axis]
        if len(used) != len(set(used)):
            raise CheckpointError(path, f"{where}: tensor_map {tensor_map!r} uses a device dim twice")
        if not all(_is_int(v) for v in (step, size, field)) or step < 0 or size < -1 or (size and not step):
            raise CheckpointError(path, f"{where}: bad optimizer sharding (step {step!r}, size {size!r})")
        if not (isinstance(split, list) and all(_is_int(v) for v in split)):
            raise CheckpointError(path, f"{where}: bad param_split_shape {split!r}")
        out.append(Layout(name, tuple(dev), tuple(axes), step, size, field, tuple(split), param_stage, shape,
                          nested, str(path)))
    return (None if prefixed else stage), out
