"""``ms2gguf inspect``: what a checkpoint holds, as a table or as JSON."""

from collections import defaultdict

from msckpt import CheckpointError
from msckpt.classify import GROUP_TITLES, GROUPS, group_of


def describe(ckpt, check_crc=True):
    """A JSON-ready description of an open checkpoint."""
    crc = {"present": ckpt.crc is not None, "stored": ckpt.crc, "valid": None}
    if ckpt.crc is not None and check_crc:
        actual = ckpt.computed_crc()
        crc.update(valid=actual == ckpt.crc, computed=actual)
    entries = []
    per_dtype = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    per_group = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    for t in ckpt:
        group = group_of(t)
        entry = {
            "name": t.name, "group": group, "kind": t.kind,
            "dtype": t.dtype.name if t.dtype else "MapTensor",
            "shape": list(t.shape), "bytes": t.nbytes, "records": t.records, "offset": t.offset,
        }
        params = 0
        if t.kind == "str":
            entry["value"] = t.string()
        elif t.kind == "maptensor":
            entry["parts"] = [{"dtype": d, "shape": s} for d, s in t.parts]
            entry["note"] = "MapParameter table; not convertible"
        else:
            params = t.n_elements
            if t.dtype.note:
                entry["note"] = t.dtype.note
            if params == 1 and t.dtype.kind in ("int", "float", "bool"):
                entry["value"] = t.value()
        entry["parameters"] = params
        entries.append(entry)
        for bucket in (per_dtype[entry["dtype"]], per_group[group]):
            bucket["tensors"] += 1
            bucket["parameters"] += params
            bucket["bytes"] += t.nbytes
    return {
        "file": ckpt.path,
        "format": ckpt.format,
        "size": ckpt.file_size,
        "encrypted": ckpt.encrypted,
        "crc": crc,
        "metadata": ckpt.metadata,
        "tensors": len(entries),
        "parameters": sum(e["parameters"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "per_dtype": dict(per_dtype),
        "per_group": {g: per_group[g] for g in GROUPS if g in per_group},
        "entries": entries,
        "distributed": ckpt.distributed_info() if hasattr(ckpt, "distributed_info") else None,
    }


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def format_text(info):
    lines = []
    crc = info["crc"]
    if not crc["present"]:
        crc_text = "none"
    elif crc["valid"] is None:
        crc_text = f"present ({crc['stored']}), not checked"
    else:
        crc_text = f"present, {'valid' if crc['valid'] else 'MISMATCH'} ({crc['stored']})"
    lines.append(f"file:       {info['file']}")
    lines.append(f"format:     {info['format']}" + (f", encrypted ({info['encrypted']})" if info["encrypted"] else ""))
    lines.append(f"size:       {info['size']:,} bytes ({human_bytes(info['size'])})")
    lines.append(f"crc:        {crc_text}")
    if info["metadata"]:
        lines.append(f"metadata:   {info['metadata']}")
    lines.append(f"entries:    {info['tensors']} ({info['parameters']:,} parameters, {human_bytes(info['bytes'])})")
    if not info["entries"]:
        lines.append("")
        lines.append("(no tensors: MindSpore writes an empty file when every saved tensor had zero size)")
        return "\n".join(lines)

    width = max(len(e["name"]) for e in info["entries"])
    width = min(max(width, 4), 80)
    for group in GROUPS:
        members = [e for e in info["entries"] if e["group"] == group]
        if not members:
            continue
        stats = info["per_group"][group]
        lines.append("")
        lines.append(f"{GROUP_TITLES[group]}: {stats['tensors']} entries, {stats['parameters']:,} parameters, "
                     f"{human_bytes(stats['bytes'])}")
        lines.append(f"  {'name':<{width}}  {'dtype':<12} {'shape':<18} {'bytes':>14} {'records':>7}")
        for e in members:
            shape = "x".join(map(str, e["shape"])) if e["shape"] else "scalar"
            extra = ""
            if "value" in e:
                extra = f"  = {e['value']!r}"
            elif "note" in e:
                extra = f"  ({e['note']})"
            lines.append(f"  {e['name']:<{width}}  {e['dtype']:<12} {shape:<18} {e['bytes']:>14,} "
                         f"{e['records']:>7}{extra}")
    lines += distributed_lines(info.get("distributed"))
    lines.append("")
    lines.append("per dtype:")
    for dtype, stats in sorted(info["per_dtype"].items()):
        lines.append(f"  {dtype:<12} {stats['tensors']:>6} tensors {stats['parameters']:>16,} parameters "
                     f"{human_bytes(stats['bytes']):>12}")
    return "\n".join(lines)


def crc_problem(info):
    crc = info["crc"]
    if crc["present"] and crc["valid"] is False:
        return CheckpointError(info["file"], f"CRC mismatch: the file stores {crc['stored']} but its content "
                               f"gives {crc['computed']}")
    return None


def distributed_lines(dist):
    """The ranks and per-parameter layouts of a distributed checkpoint (rank_N/ shards merged on the fly)."""
    if not dist:
        return []
    ranks = dist["ranks"]
    lines = ["", f"distributed: {len(ranks)} ranks ({dist['stages']} pipeline stage(s) x "
                 f"{dist['devices_per_stage']} devices), step {dist['step'] or '-'}, strategy {dist['strategy']}"]
    for r in ranks:
        lines.append(f"  rank_{r['rank']:<4} {r['file']}  {r['size']:,} bytes")
    layouts = dist["layouts"]
    if layouts:
        width = min(max(max(len(e["name"]) for e in layouts), 4), 80)
        lines.append("")
        lines.append(f"sharded parameters: {len(layouts)}")
        lines.append(f"  {'name':<{width}}  stage {'dev_matrix':<12} {'tensor_map':<16} {'opt step/size':<13} "
                     "shard -> merged shape")
        for e in layouts:
            opt = f"{e['opt_shard_step']}/{e['opt_shard_size']}" if e["opt_shard_size"] else "-"
            lines.append(f"  {e['name']:<{width}}  {e['stage']:>5} {str(e['dev_matrix']):<12} "
                         f"{e['tensor_map']:<16} {opt:<13} {'x'.join(map(str, e['shard_shape'])) or 'scalar'} -> "
                         f"{'x'.join(map(str, e['shape'])) or 'scalar'}")
    if dist["unsharded"]:
        lines.append(f"not in the strategy (taken from rank_0): {', '.join(dist['unsharded'])}")
    return lines
