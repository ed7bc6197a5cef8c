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
        "checkpoint2": ckpt.iteration_info() if hasattr(ckpt, "iteration_info") else None,
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
    lines += iteration_lines(info.get("checkpoint2"), {e["name"]: e["group"] for e in info["entries"]})
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
    strategy = f"strategy {dist['strategy']}" if dist["strategy"] else "no strategy (one rank: whole tensors)"
    dedup = ", de-duplicated (remove_redundancy)" if dist.get("deduplicated") else ""
    lines = ["", f"distributed: {len(ranks)} rank(s) ({dist['stages']} pipeline stage(s) x "
                 f"{dist['devices_per_stage']} devices), step {dist['step'] or '-'}{dedup}, {strategy}"]
    if dist.get("steps"):
        lines.append(f"  saved steps (--step): {', '.join(dist['steps'])}")
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
    if dist["unsharded"] and dist["strategy"]:
        lines.append(f"not in the strategy (taken from rank_0): {', '.join(dist['unsharded'])}")
    return lines


def _ranks_text(ranks):
    if ranks and ranks == list(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return ",".join(map(str, ranks))


def iteration_lines(it, groups):
    """A MindFormers Checkpoint 2.0 save: iterations, files, common.json, and how metadata.json splits each
    parameter (optimizer state, split like its parameters, is only counted)."""
    if not it:
        return []
    iterations = ", ".join(map(str, it["iterations"])) or "-"
    tracker = f"; {'latest_checkpointed_iteration.txt'}: {it['tracker']}" if it["tracker"] is not None else \
        "; no latest_checkpointed_iteration.txt"
    world = f"{it['world']} rank(s)" if it["world"] else "ranks unknown"
    kind = "de-duplicated (remove_redundancy)" if it["deduplicated"] else \
        ("metadata.json" if it["metadata"] else "single card, no metadata.json")
    lines = ["", f"checkpoint 2.0: iteration {it['iteration'] if it['iteration'] is not None else '-'} "
                 f"(iterations --step: {iterations}{tracker}), {world}, {kind}",
             f"  directory: {it['iteration_dir']}"]
    if it["common"]:
        facts = ", ".join(f"{k} {v}" for k, v in it["common"].items() if v is not None)
        lines.append(f"  common.json: {facts}")
    for title, files in (("model files", it["model_files"]), ("optimizer files", it["opt_files"])):
        if not files:
            continue
        total = sum(f["size"] for f in files)
        lines.append(f"  {title}: {len(files)}, {total:,} bytes"
                     + ("" if title == "model files" or it["optimizer_read"] else " (not read)"))
        for f in files:
            lines.append(f"    {f['file']}  {f['size']:,} bytes")
    layouts = [e for e in it["layouts"] if groups.get(e["name"]) != "optimizer"]
    if layouts:
        width = min(max(max(len(e["name"]) for e in layouts), 4), 80)
        lines.append("")
        lines.append(f"parameters in metadata.json: {len(layouts)}"
                     + (f" (+ {len(it['layouts']) - len(layouts)} optimizer states, split like their parameters)"
                        if len(it["layouts"]) > len(layouts) else ""))
        lines.append(f"  {'name':<{width}}  {'shape':<12} {'split':<8} {'chunks':>6} {'holders':>7}  layout")
        for e in layouts:
            lay = e["layout"]
            how = "whole on every rank" if lay is None else (
                f"dev {lay.get('device_matrix')} map {json_text(lay.get('tensor_map'))} "
                f"ranks {_ranks_text(lay.get('rank_list') or [])}")
            lines.append(f"  {e['name']:<{width}}  {'x'.join(map(str, e['global_shape'])) or 'scalar':<12} "
                         f"{'x'.join(map(str, e['axis_fragmentations'])) or '-':<8} {e['chunks']:>6} "
                         f"{e['holders']:>7}  {how}")
    if it["unlisted"]:
        lines.append(f"in the files but not in metadata.json (not read, as MindFormers' loader does not): "
                     f"{', '.join(it['unlisted'])}")
    return lines


def json_text(value):
    return str(value).replace("'", "").replace("(", "[").replace(")", "]")
