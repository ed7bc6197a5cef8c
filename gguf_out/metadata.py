"""GGUF metadata (KV pairs) for a planned conversion: general.*, architecture hparams, tokenizer."""

from gguf import GGUFValueType as V, Keys

from .errors import ConvertError
from .writer import KV

_KINDS = {"u32": KV.u32, "f32": KV.f32, "bool": KV.bool, "str": KV.str, "i32": KV.i32}


def build(fmap, plan, vocab, preset, name):
    """``preset``: the --outtype's quant_policy.Preset (general.file_type, general.quantization_version)."""
    kvs = [
        (Keys.General.ARCHITECTURE, KV.str(fmap.arch)),
        (Keys.General.TYPE, KV.str("model")),
        (Keys.General.NAME, KV.str(name)),
        (Keys.General.FILE_TYPE, KV.u32(preset.file_type)),
    ]
    if preset.quantization_version is not None:
        kvs.append((Keys.General.QUANTIZATION_VERSION, KV.u32(preset.quantization_version)))
    for key, (kind, source) in fmap.metadata.items():
        if not isinstance(source, str):        # a constant of the architecture (e.g. deepseek2's head_count_kv 1)
            kvs.append((key.replace("{arch}", fmap.arch), _KINDS[kind](source)))
            continue
        if plan.hp.get(source) is None and key in fmap.optional_metadata:
            continue
        if source not in plan.hp:
            raise ConvertError(f"{fmap.path}: metadata key {key} needs '{source}', which neither the config nor "
                               "the tensors provide")
        kvs.append((key.replace("{arch}", fmap.arch), _KINDS[kind](plan.hp[source])))
    kvs.extend(tokenizer_kvs(vocab))
    return kvs


def tokenizer_kvs(vocab):
    kvs = [
        (Keys.Tokenizer.MODEL, KV.str(vocab.model)),
        (Keys.Tokenizer.PRE, KV.str(vocab.pre or "default")),
        (Keys.Tokenizer.LIST, KV.array(V.STRING, vocab.tokens)),
        (Keys.Tokenizer.SCORES, KV.array(V.FLOAT32, vocab.scores)),
        (Keys.Tokenizer.TOKEN_TYPE, KV.array(V.INT32, [int(t) for t in vocab.types])),
    ]
    if vocab.merges:
        kvs.append((Keys.Tokenizer.MERGES, KV.array(V.STRING, vocab.merges)))
    ids = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
           "pad": Keys.Tokenizer.PAD_ID, "eot": Keys.Tokenizer.EOT_ID}
    for name, key in ids.items():
        if name in vocab.special:
            kvs.append((key, KV.u32(vocab.special[name])))
    for key, value in ((Keys.Tokenizer.ADD_BOS, vocab.add_bos), (Keys.Tokenizer.ADD_EOS, vocab.add_eos),
                       (Keys.Tokenizer.ADD_PREFIX, vocab.add_space_prefix)):
        if value is not None:
            kvs.append((key, KV.bool(value)))
    if vocab.chat_template:
        kvs.append((Keys.Tokenizer.CHAT_TEMPLATE, KV.str(vocab.chat_template)))
    return kvs
