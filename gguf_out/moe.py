"""Mixture-of-experts routing: what MindFormers computed against what llama.cpp will compute.

A router turns a token's logits over the experts into the weights of its top-k experts. MindFormers (both the mcore
router, parallel_core/training_graph/transformer/moe/router.py, and the legacy MoE) does: a score function
(softmax, or sigmoid) over all experts -> top-k -> divide by their sum when ``norm_topk_prob`` and k > 1 -> times
``routed_scaling_factor``. llama.cpp fixes some of these per architecture (moe-families.md §3.2, §5.2): qwen3moe and
llama always use softmax and always renormalise, and ignore any scale key. The map's ``routing`` says, for each of
``gating``, ``norm`` and ``scale``, either the fixed behaviour or "key" (the GGUF carries it).

What a GGUF cannot represent is an error naming the setting and its effect (``--allow-inexact`` makes it a
warning); a scale under renormalisation is folded exactly into the expert down projections (the steps' ``scale``
on ``expert_scale_fold``).
"""

from .errors import ConvertError

FIXED_GATING = ("softmax", "sigmoid")


def check_routing(fmap, hp, config_path, allow_inexact):
    """(warnings, notes); raises ConvertError for routing the GGUF cannot carry unless ``allow_inexact``. Sets
    ``expert_scale_fold`` (the factor the map's scale step multiplies into ffn_down_exps, 1 if none)."""
    spec = fmap.routing
    if not spec or not hp.get("n_expert"):
        return [], []
    k = int(hp.get("n_expert_used") or 0)
    if k < 1:
        raise ConvertError(f"{config_path}: no number of experts per token ({_keys(fmap, 'n_expert_used')}); "
                           "llama.cpp aborts without expert_used_count")
    if k > int(hp["n_expert"]):
        raise ConvertError(f"{hp.source['n_expert_used']} is {k}, more than the {hp['n_expert']} experts")
    gating = _gating(hp)
    norm = bool(hp.get("norm_topk_prob", True)) and k > 1
    scale = hp.get("routed_scaling_factor")
    scale = 1.0 if scale is None else float(scale)
    problems, warnings, notes = [], [], []
    arch = fmap.arch
    if spec.get("gating") in FIXED_GATING and gating != spec["gating"]:
        problems.append(f"the router uses {gating} scores ({_where(hp, 'score_function', 'gating_sigmoid')}), but "
                        f"llama.cpp's {arch} always uses {spec['gating']}: every expert weight would differ")
    if spec.get("norm") == "always" and not norm:
        why = (f"{_where(hp, 'norm_topk_prob')} is false" if k > 1 else "one expert per token is not renormalised by "
               "MindFormers")
        problems.append(f"{why}: the model weights its top-{k} experts by their {gating} probabilities as they are, "
                        f"but llama.cpp's {arch} always renormalises them to sum to 1, so the GGUF would compute "
                        "different outputs")
    hp.put("expert_gating_func", 2 if gating == "sigmoid" else 1, "the router's score function")
    hp.put("expert_weights_norm", norm, "norm_topk_prob and more than one expert per token")
    fold = 1.0
    if scale != 1.0:
        if spec.get("scale") == "fold":
            fold = scale
            notes.append(f"{config_path}: {_where(hp, 'routed_scaling_factor')} = {scale:g}: llama.cpp's {arch} "
                         "has no routing scale, so it is multiplied into the expert down projections "
                         "(ffn_down_exps), which gives the same outputs")
        elif spec.get("scale") != "key":
            problems.append(f"{_where(hp, 'routed_scaling_factor')} is {scale:g}, which llama.cpp's {arch} cannot "
                            "apply")
    hp.put("expert_scale_fold", fold, "routed_scaling_factor folded into ffn_down_exps")
    hp.put("expert_weights_scale", scale, "routed_scaling_factor")
    problems += _groups(spec, hp, k, arch)
    for problem in problems:
        if not allow_inexact:
            raise ConvertError(f"{config_path}: {problem}; pass --allow-inexact to convert anyway")
        warnings.append(f"{config_path}: {problem} (converting anyway: --allow-inexact)")
    return warnings, notes


def _groups(spec, hp, k, arch):
    """Group-limited routing (DeepSeek-V3's node-limited top-k): experts in n_group groups, each token choosing
    among the topk_group groups with the best scores. llama.cpp scores a group by the sum of its top-2 expert
    scores; MindFormers' mcore router by its top (k // topk_group) (router.py _group_limited_topk). The legacy
    research/deepseek3 networks, told apart by the map's tensor_flags: the gmm training MoE (MoEV3) has no group
    limit; the bmm one (TopkRouterV2) only with moe_config.topk_method noaux_tc (top 2) or group_limited_greedy
    (the best expert); the inference network (ParallelMoEV2) always groups by the top 2."""
    groups = int(hp.get("n_group") or 1)
    method = hp.get("topk_method")
    why = _where(hp, "topk_method")
    if hp.get("legacy_gmm"):
        method, why = "greedy", "the grouped-matmul MoE (MoEV3) of MindFormers' legacy network"
    elif hp.get("legacy_training") and method is None:
        method, why = "greedy", "moe_config.topk_method (not set: MoEConfig's default greedy)"
    elif hp.get("legacy_inference"):
        method = "noaux_tc"
    if groups > 1 and method == "greedy":
        hp.put("n_group", None, f"{why}: no group limit")      # no expert_group_* keys
        hp.put("topk_group", None, f"{why}: no group limit")
        return []
    if groups <= 1:
        return []
    used = int(hp.get("topk_group") or 0)
    if spec.get("groups") != "top2":
        return [f"the router limits each token to {used} of {groups} expert groups, which llama.cpp's {arch} "
                "does not do"]
    if hp["n_expert"] % groups or not 1 <= used <= groups:
        raise ConvertError(f"{hp.source['n_group']}: {groups} expert groups with topk_group {used} do not fit "
                           f"{hp['n_expert']} experts")
    if method == "group_limited_greedy":
        return [f"the router ({why} group_limited_greedy) scores each of its {groups} expert groups by its best "
                f"expert; llama.cpp's {arch} always uses the top 2, so tokens could choose other groups"]
    legacy = hp.get("legacy_training") or hp.get("legacy_inference")
    if not legacy and k // used != 2:
        return [f"the router scores each of its {groups} expert groups by its top {k // used} experts "
                f"(num_experts_per_tok {k} // topk_group {used}); llama.cpp's {arch} always uses the top 2, so "
                "tokens could choose other groups"]
    return []


def _gating(hp):
    function = hp.get("score_function")
    legacy_training = hp.get("legacy_training")
    if hp.source.get("score_function") == "default" and (hp.get("gating_sigmoid") is not None or legacy_training):
        # the legacy moe_config's use_gating_sigmoid says, not the family's default; the research training network
        # reads it with MoEConfig's default False (softmax); its inference network always scores by sigmoid
        function = None
    if isinstance(function, str) and function.lower() in FIXED_GATING:
        return function.lower()
    return "sigmoid" if hp.get("gating_sigmoid") else "softmax"


def _where(hp, *names):
    """The config key a setting came from, or the setting's name and 'the default'."""
    for name in names:
        source = hp.source.get(name) if name in hp else None
        if source and source != "default":
            return source.rsplit(": ", 1)[-1]
    return f"{names[0]} (not set, the family's default)"


def _keys(fmap, name):
    return " / ".join(fmap.config_keys.get(name, [name]))
