"""``auto`` picks exactly its own map for every bundled model fixture.

Several maps share MindFormers' mcore names (qwen2, qwen3, glm4, glm4_moe: embedding.word_embeddings,
decoder.layers.N.self_attention.linear_qkv, ...) or legacy ones (llama2 / llama3; chatglm / glm4 legacy), so each
map's detect rules must single it out. The fixtures are those the conversion tests check against real logits; a
model fixture missing from the table below fails the completeness test, so a new family cannot skip this.
"""

from pathlib import Path

import pytest
from conftest import FIXTURES

from gguf_out import detect, hparams
from gguf_out.maps import bundled_names
from msckpt import open_checkpoint

LLAMA_SPM = FIXTURES / "llama" / "tokenizer" / "tokenizer.model"
QWEN_BPE = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"
DEEPSEEK_BPE = FIXTURES / "bpe" / "deepseek3" / "hf" / "tokenizer.json"
GLM4_BPE = FIXTURES / "bpe" / "glm4" / "hf" / "tokenizer.json"
GLM4_TIKTOKEN = FIXTURES / "bpe" / "glm4" / "tiktoken" / "tokenizer.model"
CHATGLM3_SPM = FIXTURES / "chatglm" / "tokenizer" / "tokenizer.model"

# fixture (a checkpoint file or directory under tests/fixtures) -> (tokenizer, map auto must choose)
CASES = {
    "llama/mha/model.ckpt": (LLAMA_SPM, "llama2"),
    "llama/gqa_fused/model.ckpt": (LLAMA_SPM, "llama2"),
    "llama/padded_vocab/model.ckpt": (LLAMA_SPM, "llama2"),
    "llama/bf16/model.ckpt": (LLAMA_SPM, "llama2"),
    "llama/k256/model.ckpt": (LLAMA_SPM, "llama2"),
    "llama3/rope_scaled/model.ckpt": (FIXTURES / "llama3" / "tokenizer" / "tokenizer.json", "llama3"),
    "qwen2/tied/model.ckpt": (QWEN_BPE, "qwen2"),
    "qwen2/fused/model.ckpt": (QWEN_BPE, "qwen2"),
    "qwen2/mcore/model.ckpt": (QWEN_BPE, "qwen2"),
    "qwen2/mcore_interleaved/model.ckpt": (QWEN_BPE, "qwen2"),
    "qwen3/tied/model.ckpt": (QWEN_BPE, "qwen3"),
    "qwen3/tied/shards": (QWEN_BPE, "qwen3"),
    "qwen3/contiguous/model.ckpt": (QWEN_BPE, "qwen3"),
    "chatglm/fused/model.ckpt": (CHATGLM3_SPM, "chatglm"),
    "chatglm/split/model.ckpt": (GLM4_TIKTOKEN, "chatglm"),
    "chatglm/rearranged/model.ckpt": (GLM4_BPE, "chatglm"),
    "glm4/mcore/model.ckpt": (GLM4_BPE, "glm4"),
    "glm4/legacy/model.ckpt": (GLM4_TIKTOKEN, "glm4"),
    "glm4_moe/mcore/model.ckpt": (GLM4_BPE, "glm4_moe"),
    "qwen3_moe/train/model.ckpt": (QWEN_BPE, "qwen3_moe"),
    "qwen3_moe/infer/model.ckpt": (QWEN_BPE, "qwen3_moe"),
    "mixtral/bmm_scaled/model.ckpt": (LLAMA_SPM, "mixtral"),
    "mixtral/gmm/model.ckpt": (LLAMA_SPM, "mixtral"),
    "deepseek3/train/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "deepseek3/concat/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "deepseek3/noq/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "deepseek3/legacy_train/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "deepseek3/legacy_gmm/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "deepseek3/legacy_infer/model.ckpt": (DEEPSEEK_BPE, "deepseek3"),
    "lora/unfused/model.ckpt": (LLAMA_SPM, "llama2"),          # base weights + LoRA: chosen by the base weights
    "lora/fused/model.ckpt": (LLAMA_SPM, "llama2"),
    "lora/mcore/model.ckpt": (QWEN_BPE, "qwen3"),
}


def choose(fixture, tokenizer):
    path = FIXTURES / fixture
    config_path = hparams.find_config(path)
    config = hparams.read_config(config_path)
    with open_checkpoint(path) as ckpt:
        return detect.choose_map(ckpt, config, config_path, str(tokenizer)).family


@pytest.mark.parametrize("fixture", list(CASES))
def test_auto_chooses_the_fixtures_own_map(fixture):
    tokenizer, expected = CASES[fixture]
    assert expected in bundled_names()
    assert choose(fixture, tokenizer) == expected


def test_every_model_fixture_is_in_the_table():
    fixtures = {str(p.parent.relative_to(FIXTURES) / "model.ckpt") for p in FIXTURES.rglob("tokens.json")}
    assert fixtures <= set(CASES), sorted(fixtures - set(CASES))


@pytest.mark.parametrize("fixture,tokenizer,wrong", [
    ("glm4/legacy/model.ckpt", GLM4_TIKTOKEN, "chatglm"),     # legacy GLM names: sandwich norms make it glm4
    ("chatglm/fused/model.ckpt", CHATGLM3_SPM, "glm4"),
    ("qwen2/mcore/model.ckpt", QWEN_BPE, "qwen3"),            # mcore names: q/k/v bias, no q_layernorm
    ("glm4/mcore/model.ckpt", GLM4_BPE, "qwen2"),
    ("glm4_moe/mcore/model.ckpt", GLM4_BPE, "glm4"),         # no sandwich norms, experts
    ("glm4_moe/mcore/model.ckpt", GLM4_BPE, "qwen3_moe"),    # q/k/v bias, shared experts, dense layers
    ("glm4/mcore/model.ckpt", GLM4_BPE, "glm4_moe"),
])
def test_the_other_maps_are_ruled_out_with_a_reason(fixture, tokenizer, wrong):
    """Decisive, not just scored: the near-miss map is rejected by its detect rules or tensor names."""
    from gguf_out.detect import _rejects
    from gguf_out.maps import load_map

    path = FIXTURES / fixture
    config = hparams.read_config(hparams.find_config(path))
    with open_checkpoint(path) as ckpt:
        weights = [t.name for t in ckpt if detect.group_of(t) == "weights"]
    assert _rejects(load_map(wrong), weights, config) is not None


def test_glm_checkpoints_without_a_config_hint_still_decide(tmp_path):
    """The tensor names alone decide among the GLM maps and qwen2 (a config.json with no architectures)."""
    import json
    import shutil

    for fixture, expected in (("glm4/mcore", "glm4"), ("qwen2/mcore", "qwen2"), ("glm4_moe/mcore", "glm4_moe")):
        folder = tmp_path / fixture
        folder.mkdir(parents=True)
        shutil.copyfile(FIXTURES / fixture / "model.ckpt", folder / "model.ckpt")
        config = json.loads((FIXTURES / fixture / "config.json").read_text())
        for key in ("architectures", "model_type"):
            config.pop(key)
        (folder / "config.json").write_text(json.dumps(config))
        assert choose(Path(folder / "model.ckpt"), CASES[f"{fixture}/model.ckpt"][0]) == expected
