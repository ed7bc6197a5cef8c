"""What a checkpoint entry is: model weight, optimizer state, training scalar, string, or unsupported.

The lists are the union over MindSpore optimizers and MindFormers versions (ckpt-format.md §6.4,
mindformers-layouts.md §10). Maps refer to these groups by name in their skip rules.
"""

OPTIMIZER_PREFIXES = (
    "moment1.", "moment2.", "vhat.",                      # nn.Adam, LazyAdam, Adamax
    "adam_m.", "adam_v.",                                 # AdamWeightDecay, MindFormers AdamW
    "moments.",                                           # Momentum, FTRL, Thor
    "accum.", "accum_update.", "stat.",                   # SGD, Adagrad, Adadelta
    "lamb_m.", "lamb_v.", "muon_m.",                      # LAMB, Muon
    "mean_grad.", "mean_square.", "moment.",              # RMSProp
    "prev.", "step_size.", "ax_.",                        # Rprop, ASGD
    "exp_avg.", "exp_avg_sq.", "max_exp_avg_sq.", "exp_inf.",   # mint / fused AdamW, Adafactor, CAME
    "momentum_buf.",                                      # mint SGD
    "accu_grads.",                                        # gradient accumulation
)

TRAINING_SCALARS = frozenset((
    "global_step", "learning_rate", "beta1_power", "beta2_power", "momentum", "scale_sense",
    "current_iterator_step", "last_overflow_iterator_step", "scale_window_up_count",
    "scale_window_down_count", "list_index", "graceful_exit", "graceful_init", "epoch_num", "step_num",
    "loss_scale", "global_batch_size", "__exception_save__", "afactor_step",
))

# Run-time buffers saved with the network, never weights (KV caches, MoE statistics).
BUFFER_SUFFIXES = (
    ".key_cache", ".value_cache", ".hot_expert_index", ".cold_expert_index", ".expert_load", ".pi_cache",
    ".fi_cache", ".fi_accu", ".expert_mapping", ".num_tokens_per_expert", ".max_logits_val",
    ".rotary_pos_emb.inv_freq", ".rotary_emb.inv_freq",
)

GROUPS = ("weights", "optimizer", "training", "buffers", "strings", "unsupported")
GROUP_TITLES = {
    "weights": "model weights",
    "optimizer": "optimizer state",
    "training": "training scalars",
    "buffers": "run-time buffers",
    "strings": "strings",
    "unsupported": "unsupported entries",
}


def group_of(tensor):
    if getattr(tensor, "group", None):
        return tensor.group      # set by readers that know better than the name (Checkpoint 2.0 opt-* files)
    name = tensor.name
    if tensor.kind == "str":
        return "strings"
    if tensor.kind == "maptensor":
        return "unsupported"
    if name.startswith(OPTIMIZER_PREFIXES):
        return "optimizer"
    if name in TRAINING_SCALARS or name.startswith("cumsum_value") or ".expert_load_history" in name:
        return "training" if name in TRAINING_SCALARS else "buffers"
    if name.endswith(BUFFER_SUFFIXES):
        return "buffers"
    if tensor.shape == ():
        return "training"       # 0-d values are append_dict/training bookkeeping, never LLM weights
    return "weights"
