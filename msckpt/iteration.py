"""MindFormers "Checkpoint 2.0" saves read as one checkpoint (checkpoint-2.0.md).

    <root>/latest_checkpointed_iteration.txt          the newest complete iteration ("10", no newline)
    <root>/iteration_00000010/[prefix-]model-IIIIIII-TTTTTTT.safetensors   one file per (saving) rank
                              [prefix-]opt-IIIIIII-TTTTTTT.safetensors     optimizer state, same numbering
                              common.json                                  step, loss scale, ...
                              metadata.json                                multi-rank saves only

A multi-rank save's metadata.json lists, for every tensor, its global shape, how many equal slices each axis is cut
into (``axis_fragmentations``), the MindSpore layout that cut it, and its distinct chunks; ``storage_data`` says
which files hold each chunk (every holder in a normal save, one in a ``remove_redundancy`` save). A chunk is stored
under the tensor's own name; its ``global_offset`` is a one-element list holding a *slice index* in row-major order
over ``axis_fragmentations``. Tensors are assembled chunk by chunk when read (msckpt/tiled.py); optimizer files are
told apart by file name, as MindFormers does, and are opened only when asked for (``optimizer=True``).
"""

import re
from math import prod
from pathlib import Path

import numpy as np

from . import safetensors
from .checkpoint import Checkpoint
from .classify import TRAINING_SCALARS
from .errors import CheckpointError
from .source import Source, ensure_open_files
from .tiled import TiledTensor

TRACKER = "latest_checkpointed_iteration.txt"
METADATA = "metadata.json"
COMMON = "common.json"
_ITERATION_DIR = re.compile(r"^iteration_(\d+)$")
_SAVE_FILE = re.compile(r"^(?:(?P<prefix>.+)-)?(?P<kind>model|opt)-(?P<index>\d+)-(?P<total>\d+)\.safetensors$")
_OPT_FILE = re.compile(r"(?:.+-)?opt-\d+-\d+\.safetensors")   # MindFormers' own test (utils.is_optimizer_ckpt_file)


def is_root(folder):
    """A Checkpoint 2.0 save root: the tracker file or ``iteration_*/`` directories."""
    folder = Path(folder)
    return (folder / TRACKER).is_file() or any(_ITERATION_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())


def is_iteration(folder):
    """One ``iteration_*/`` directory (by name, or by what it holds)."""
    folder = Path(folder)
    if (folder / METADATA).is_file() or (folder / COMMON).is_file():
        return True
    return bool(_ITERATION_DIR.match(folder.name)) or any(_SAVE_FILE.match(p.name) for p in folder.iterdir())


def iterations(root):
    """{iteration number: directory} under a save root."""
    out = {}
    for p in Path(root).iterdir():
        m = _ITERATION_DIR.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def read_tracker(root):
    """The iteration latest_checkpointed_iteration.txt names, or None when there is no tracker."""
    path = Path(root) / TRACKER
    from .safeio import present
    if not present(path):
        return None
    from .safeio import read_bytes
    text = read_bytes(path, what="tracker file", limit=4096).decode("utf-8", errors="replace").strip()
    if not text.isdigit():
        raise CheckpointError(path, f"should hold an iteration number, but holds {text[:40]!r}")
    return int(text)


def _step_number(step, root, found):
    text = str(step).strip()
    if text.isdigit():
        return int(text)
    have = f" (iterations here: {_numbers(found)})" if found else ""
    if re.fullmatch(r"\d+_\d+", text):
        raise CheckpointError(root, f"--step {text}: EPOCH_N selects a step of a legacy rank_N/ tree; a Checkpoint "
                              f"2.0 save numbers its iterations by global step, give N{have}")
    raise CheckpointError(root, f"bad step {step!r}: give the iteration number N of iteration_N/{have}")


def _numbers(found):
    return ", ".join(str(n) for n in found)


def locate(path, step=None):
    """(iteration directory, its number or None, the root's {number: directory}, the tracker's number or None).

    ``path`` is a save root or one iteration directory. In a root, ``step`` selects ``iteration_{step:08d}``;
    without it the tracker decides, or the only iteration there is."""
    folder = Path(path)
    if is_iteration(folder) and not is_root(folder):
        m = _ITERATION_DIR.match(folder.name)
        number = int(m.group(1)) if m else None
        parent = folder.parent
        siblings = iterations(parent) if m else {}
        tracker = read_tracker(parent) if m and (parent / TRACKER).is_file() else None
        if step is not None and (number is None or _step_number(step, folder, siblings) != number):
            raise CheckpointError(folder, f"is one iteration directory; --step {step} selects an iteration of the "
                                  "save root (pass the root instead)")
        return folder, number, siblings, tracker
    found = iterations(folder)
    tracker = read_tracker(folder)
    if step is not None:
        number = _step_number(step, folder, found)
        if number not in found:
            raise CheckpointError(folder, f"has no iteration_{number:08d}/ for --step {step}"
                                  + (f" (iterations here: {_numbers(found)})" if found else ""))
    elif tracker is not None:
        number = tracker
        if number not in found:
            raise CheckpointError(folder / TRACKER, f"names iteration {number}, but iteration_{number:08d}/ is missing"
                                  + (f" (iterations here: {_numbers(found)}; pass --step N)" if found else ""))
    elif len(found) == 1:
        number = next(iter(found))
    elif not found:
        raise CheckpointError(folder, f"has {TRACKER} but no iteration_*/ directories")
    else:
        raise CheckpointError(folder, f"has several iterations ({_numbers(found)}) and no {TRACKER} to say which is "
                              "complete; pass --step N")
    return found[number], number, found, tracker


def open_iteration(path, step=None, optimizer=False, strategy=None, dec_key=None, dec_mode=None, verify_crc=False,
                   tmp_dir=None):
    """Open a Checkpoint 2.0 root or iteration directory; ``optimizer=True`` also reads the optimizer files.

    (``dec_mode``, ``verify_crc`` and ``tmp_dir`` are accepted as for every checkpoint: the files are plain
    safetensors, and a checkpoint-wide CRC does not exist for a directory.)"""
    if strategy is not None:
        raise CheckpointError(path, "is a MindFormers Checkpoint 2.0 save; its metadata.json holds the layouts, so "
                              "--strategy does not apply")
    if dec_key is not None:
        raise CheckpointError(path, "is a MindFormers Checkpoint 2.0 save (safetensors); --dec-key does not apply")
    folder, number, found, tracker = locate(path, step)
    files = _Files(folder)
    try:
        ckpt = _open(Path(path), folder, files, optimizer)
    except BaseException:
        files.close()
        raise
    ckpt.iteration, ckpt.iterations, ckpt.tracker = number, found, tracker
    return ckpt


def _open(path, folder, files, optimizer):
    from .safeio import present, regular_entries
    names = sorted(p.name for p in regular_entries((p for p in folder.iterdir() if p.name.endswith(".safetensors")),
                                                   what="checkpoint"))
    opt_files = [n for n in names if _OPT_FILE.fullmatch(n)]
    model_files = [n for n in names if n not in opt_files]
    common = _read_common(folder / COMMON)
    if present(folder / METADATA):
        meta = _read_metadata(folder / METADATA)
        tensors, facts = _assemble(folder, meta, files, optimizer)
        if optimizer:
            tensors += _optimizer_scalars(files, opt_files, {t.name for t in tensors})
    else:
        if not model_files:
            raise CheckpointError(folder, "holds no model .safetensors files (and no metadata.json)")
        _check_single_card(folder, model_files)
        tensors = _whole_tensors(files, model_files + (opt_files if optimizer else []), set(opt_files))
        facts = {"layouts": {}, "unlisted": [], "world": 1, "deduplicated": False}
    return IterationCheckpoint(path, folder, tensors, files, model_files, opt_files, common, optimizer, **facts)


def _read_json(path, what, nonfinite=False):
    from .safeio import LARGE, load_json
    data = load_json(path, what=what, limit=LARGE, nonfinite=nonfinite)
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    return data


def _read_common(path):
    from .safeio import present
    # informational (step, loss scale): MindFormers' json.dump writes a diverged loss scale as NaN / Infinity
    return _read_json(path, "common.json", nonfinite=True) if present(path) else {}


def _read_metadata(path):
    meta = _read_json(path, "metadata.json")
    for key in ("state_dict_metadata", "storage_data"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(path, f"has no '{key}' object; is this MindFormers' metadata.json?")
    return meta


def _check_single_card(folder, model_files):
    """Without metadata.json every model tensor is whole: only a single-card save may lack it."""
    multi = [n for n in model_files if (m := _SAVE_FILE.match(n)) and int(m.group("total")) > 1]
    if multi or len(model_files) > 1:
        shown = ", ".join((multi or model_files)[:3]) + (", ..." if len(multi or model_files) > 3 else "")
        what = "model files of a multi-rank save" if multi else "several model files"
        raise CheckpointError(folder, f"holds {what} ({shown}) but no metadata.json: a single card writes one "
                              "model file, and rank 0 of a multi-rank job writes metadata.json last, so this save "
                              "did not finish (MindFormers 2.1.0's remove_redundancy save crashes this way when a "
                              "rank is given no shard)")


def _whole_tensors(files, names, optimizer_files):
    tensors, where = [], {}
    for name in names:
        for t in files.index(name).values():
            if t.name in where:
                raise CheckpointError(files.folder / name, f"holds '{t.name}', which {where[t.name]} holds too")
            where[t.name] = name
            if name in optimizer_files and t.name not in TRAINING_SCALARS:
                t.group = "optimizer"           # told apart by file, as MindFormers does, not by name
            tensors.append(t)
    return tensors


def _optimizer_scalars(files, opt_files, described):
    """Entries of the optimizer files that metadata.json does not describe (learning_rate, global_step): the same
    on every rank, taken from the first file that has them."""
    out = {}
    for name in opt_files:
        for t in files.index(name).values():
            if t.name not in described:
                out.setdefault(t.name, t)
    return list(out.values())


# ------------------------------------------------------------------------------------------------ metadata.json

def _assemble(folder, meta, files, optimizer):
    """(tensors in metadata order, facts: {name: layout facts for inspect}, the names the files hold that metadata
    omits, the world size, whether the save is de-duplicated)."""
    path = folder / METADATA
    storage = meta["storage_data"]
    tensors, layouts, opened = [], {}, set()
    ranks, single, replicated = {0}, True, False
    for name, spec in meta["state_dict_metadata"].items():
        chunks = _chunks(path, name, spec, storage)
        for *_, entries in chunks:
            for e in entries:
                group = e.get("rank_group") if isinstance(e.get("rank_group"), list) else []
                ranks.update(r for r in [e.get("storage_rank"), *group] if type(r) is int)
                replicated |= len(group) > 1
            single &= len(entries) == 1
        is_opt = _is_optimizer(path, name, chunks)
        if is_opt and not optimizer:
            continue
        tiles, sources = [], []
        for index, offset, local, entries in chunks:
            piece, file_name = _find_chunk(folder, files, name, index, local, entries)
            tiles.append((piece, offset))
            sources.append(file_name)
            opened.add(file_name)
        for (piece, _), file_name in zip(tiles, sources):
            if piece.dtype != tiles[0][0].dtype:
                raise CheckpointError(folder / file_name, f"chunk of '{name}' is {piece.dtype.name} here but "
                                      f"{tiles[0][0].dtype.name} in {sources[0]}; all chunks of a tensor have one "
                                      "dtype")
        shape = tuple(spec["global_shape"])
        if len(tiles) == 1:
            tensor = tiles[0][0]                 # stored whole: the file's own tensor, byte ranges and all
        else:
            tensor = TiledTensor(name, tiles[0][0].dtype, shape, tiles)
        if is_opt:
            tensor.group = "optimizer"
        tensors.append(tensor)
        layouts[name] = {"global_shape": list(shape), "axis_fragmentations": list(spec["axis_fragmentations"]),
                         "chunks": len(chunks), "layout": spec.get("layout"), "files": sorted(set(sources)),
                         "holders": max(len(entries) for *_, entries in chunks),
                         "dtype": spec.get("properties", {}).get("dtype") if isinstance(spec.get("properties"),
                                                                                      dict) else None}
    described = set(meta["state_dict_metadata"])
    # optimizer files' extras (learning_rate, global_step) are listed as entries when they are read
    unlisted = sorted({t for name in opened if not _OPT_FILE.fullmatch(name) for t in files.index(name)
                       if t not in described})
    # a remove_redundancy save names one file per chunk although chunks have several holders (rank_group)
    return tensors, {"layouts": layouts, "unlisted": unlisted, "world": max(ranks) + 1,
                     "deduplicated": single and replicated}


def _is_optimizer(path, name, chunks):
    kinds = {bool(_OPT_FILE.fullmatch(e["file_name"])) for *_, entries in chunks for e in entries}
    if len(kinds) > 1:
        raise CheckpointError(path, f"'{name}' is stored both in model and in optimizer (opt-*) files")
    return kinds == {True}


def _ints(value, what, where):
    if not (isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)):
        raise CheckpointError(where, f"bad {what} {value!r}")
    return value


def _chunks(path, name, spec, storage):
    """[(slice index, offset of the chunk's block, its shape, storage entries)], checked: every slice of the grid
    exactly once, each the global shape divided by the fragments, every entry's rank holding that block by the
    layout."""
    where = f"'{name}'"
    if not isinstance(spec, dict):
        raise CheckpointError(path, f"{where}: entry is not an object")
    shape = _ints(spec.get("global_shape"), f"global_shape of {where}", path)
    frags = _ints(spec.get("axis_fragmentations"), f"axis_fragmentations of {where}", path)
    if len(frags) != len(shape) or not all(f >= 1 for f in frags):
        raise CheckpointError(path, f"{where}: axis_fragmentations {frags} do not fit global_shape {shape}")
    if any(n % f for n, f in zip(shape, frags)):
        raise CheckpointError(path, f"{where}: global_shape {shape} does not split evenly into {frags} "
                              "(uneven splits are not supported)")
    local = [n // f for n, f in zip(shape, frags)]
    layout = spec.get("layout")
    areas = _layout_areas(path, name, layout, shape, frags) if layout is not None else None
    raw = spec.get("chunk")
    if not isinstance(raw, list) or not raw:
        raise CheckpointError(path, f"{where}: no chunk list")
    out, seen = [], {}
    for c in raw:
        offset = c.get("global_offset") if isinstance(c, dict) else None
        if not (isinstance(offset, list) and len(offset) == 1 and type(offset[0]) is int):
            raise CheckpointError(path, f"{where}: chunk global_offset {offset!r} is not a one-element slice index")
        index = offset[0]
        if not 0 <= index < prod(frags):
            raise CheckpointError(path, f"{where}: chunk slice index {index} is outside the {prod(frags)} slices of "
                                  f"axis_fragmentations {frags}")
        if c.get("local_shape") != local:
            raise CheckpointError(path, f"{where}: chunk {index} has local_shape {c.get('local_shape')} but "
                                  f"global_shape {shape} / axis_fragmentations {frags} gives {local}")
        if index in seen:
            raise CheckpointError(path, f"{where}: slice {index} is listed twice (overlapping chunks)")
        seen[index] = True
        position = np.unravel_index(index, frags) if frags else ()
        block = tuple(int(i) * n for i, n in zip(position, local))
        entries = storage.get(str((name, (index,))))
        if not (isinstance(entries, list) and entries
                and all(isinstance(e, dict) and isinstance(e.get("file_name"), str) for e in entries)):
            raise CheckpointError(path, f"{where}: storage_data has no files for chunk {index} (key "
                                  f"{str((name, (index,)))!r})")
        if areas is not None:
            for e in entries:
                rank = e.get("storage_rank")
                if areas.get(rank, block) != block:
                    raise CheckpointError(path, f"{where}: chunk {index} (block at {list(block)}) is stored by rank "
                                          f"{rank}, but the layout gives that rank the block at {list(areas[rank])}")
        out.append((index, block, tuple(local), entries))
    if len(seen) != prod(frags):
        missing = sorted(set(range(prod(frags))) - set(seen))
        raise CheckpointError(path, f"{where}: the chunks cover {len(seen)} of its {prod(frags)} slices (slice "
                              f"{missing[0]} is missing{' and more' if len(missing) > 1 else ''})")
    return out


def _layout_areas(path, name, layout, shape, frags):
    """{rank: offset of the block that rank holds} by the MindSpore layout, as MindFormers' loader places chunks
    (reshard.infer_slice_area_by_rank): rank_list[i] has coordinate i in device_matrix (last axis fastest); a
    tensor_map entry d (or a list of them, the first one major) splits its axis over device axis len-1-d."""
    where = f"'{name}': layout"
    if not isinstance(layout, dict):
        raise CheckpointError(path, f"{where} is not an object")
    dev, tmap, ranks = layout.get("device_matrix"), layout.get("tensor_map"), layout.get("rank_list")
    if not (isinstance(dev, list) and dev and all(type(d) is int and d > 0 for d in dev)):
        raise CheckpointError(path, f"{where} has a bad device_matrix {dev!r}")
    if not (isinstance(ranks, list) and len(ranks) == prod(dev) and all(type(r) is int for r in ranks)):
        raise CheckpointError(path, f"{where} has a rank_list {ranks!r} that does not fit device_matrix {dev}")
    axes = []
    for entry in tmap if isinstance(tmap, list) else [None] * (len(shape) + 1):
        dims = entry if isinstance(entry, list) else [entry]
        if not all(type(d) is int and -1 <= d < len(dev) for d in dims):
            raise CheckpointError(path, f"{where} has a tensor_map {tmap!r} that does not fit device_matrix {dev}")
        axes.append([len(dev) - 1 - d for d in dims if d != -1])
    if len(axes) != len(shape):
        raise CheckpointError(path, f"{where}: tensor_map {tmap!r} has {len(axes)} axes, global_shape {shape} has "
                              f"{len(shape)}")
    splits = [prod(dev[a] for a in axis) for axis in axes]
    if splits != frags:
        raise CheckpointError(path, f"{where} (device_matrix {dev}, tensor_map {tmap}) splits the axes {splits} "
                              f"times, but axis_fragmentations says {frags}")
    local = [n // f for n, f in zip(shape, frags)]
    out = {}
    for i, rank in enumerate(ranks):
        coord = np.unravel_index(i, dev)
        block = []
        for axis, n in zip(axes, local):
            index = 0
            for a in axis:
                index = index * dev[a] + int(coord[a])
            block.append(index * n)
        out[rank] = tuple(block)
    return out


def _find_chunk(folder, files, name, index, local, entries):
    """(the chunk as a Tensor of the first listed file that holds it, that file's name)."""
    missing, lacking = [], []
    for e in entries:
        file_name = e["file_name"]
        if Path(file_name).name != file_name:
            raise CheckpointError(folder / METADATA, f"names the file {file_name!r} outside its directory")
        if file_name not in files.indexes and not (folder / file_name).is_file():
            missing.append(file_name)
            continue
        tensor = files.index(file_name).get(name)
        if tensor is None:
            lacking.append(file_name)            # MindFormers' normal save lists holders from the layout, unread
            continue
        if tuple(tensor.shape) != local:
            raise CheckpointError(folder / file_name, f"holds '{name}' as {list(tensor.shape)}, but metadata.json "
                                  f"gives its chunk {index} the shape {list(local)}")
        return tensor, file_name
    if lacking:
        others = f" (nor does {', '.join(lacking[1:] + missing)})" if len(lacking) + len(missing) > 1 else ""
        raise CheckpointError(folder / lacking[0], f"does not hold '{name}', whose chunk {index} metadata.json places "
                              f"there{others}")
    others = f" (as are {', '.join(missing[1:])})" if len(missing) > 1 else ""
    raise CheckpointError(folder / missing[0], f"is missing; metadata.json stores chunk {index} of '{name}' "
                          f"there{others}")


class _Files:
    """The safetensors files of one iteration, opened (headers indexed) on first use and kept open."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.sources = {}
        self.indexes = {}

    def index(self, name):
        """{tensor name: Tensor} of one file."""
        if name not in self.indexes:
            ensure_open_files(len(self.sources) + 1)
            path = self.folder / name
            try:
                source = Source(path)
            except OSError as err:
                raise CheckpointError(path, f"cannot open: {err.strerror or err}") from None
            self.sources[name] = source
            if not safetensors.looks_like(source):
                raise CheckpointError(path, "is not a safetensors file", 0)
            self.indexes[name] = {t.name: t for t in safetensors.index(source)[0]}
        return self.indexes[name]

    def close(self):
        for source in self.sources.values():
            source.close()


class IterationCheckpoint(Checkpoint):
    """One iteration of a Checkpoint 2.0 save, its tensors merged on the fly; closes its files on ``close()``."""

    def __init__(self, path, folder, tensors, files, model_files, opt_files, common, optimizer, layouts, unlisted,
                 world, deduplicated):
        super().__init__(path, None, "checkpoint-2.0", tensors)
        self.folder = folder                  # the iteration directory read
        self.files = files
        self.model_files = model_files
        self.opt_files = opt_files
        self.common = common                  # common.json (step_num, global_step, loss_scale, ...)
        self.optimizer = optimizer            # whether optimizer files were read
        self.layouts = layouts                # {name: split facts} for the tensors metadata.json describes
        self.unlisted = unlisted              # names the files hold but metadata.json does not describe
        self.world = world                    # ranks of the job that saved it
        self.deduplicated = deduplicated      # saved with remove_redundancy (one file per chunk)
        self.iteration = None                 # set by open_iteration: its number, the root's, the tracker's
        self.iterations = {}
        self.tracker = None

    @property
    def file_size(self):
        names = self.model_files + (self.opt_files if self.optimizer else [])
        return sum((self.folder / n).stat().st_size for n in names)

    def close(self):
        self.files.close()

    def iteration_info(self):
        """JSON-ready facts for ``ms2gguf inspect``."""
        def listing(names):
            return [{"file": n, "size": (self.folder / n).stat().st_size} for n in names]

        return {
            "iteration_dir": str(self.folder),
            "iteration": self.iteration,
            "iterations": list(self.iterations),
            "tracker": self.tracker,
            "world": self.world,
            "metadata": (self.folder / METADATA).is_file(),
            "deduplicated": self.deduplicated,
            "model_files": listing(self.model_files),
            "opt_files": listing(self.opt_files),
            "optimizer_read": self.optimizer,
            "common": self.common,
            "layouts": [{"name": name, **facts} for name, facts in self.layouts.items()],
            "unlisted": self.unlisted,
        }
