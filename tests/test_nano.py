"""The bundled nano models: they load by name, keep every gpt-oss feature, match transformers, and their model
cards state held-out figures that are recomputed here."""

from __future__ import annotations

import math
import re

import pytest
import torch

from gptoss_viz import load_model
from gptoss_viz.runtime.checkpoints import BUNDLED, REPO_ROOT
from gptoss_viz.train import heldout_loss
from test_parity import assert_close, hf_gpt2, hf_gptoss

SLICE = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def oss():
    return load_model("gpt-oss-nano", dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2():
    return load_model("gpt2-nano", dtype=torch.float32)


def card_slice_loss(name: str) -> float:
    card = (BUNDLED[name] / "README.md").read_text(encoding="utf-8")
    m = re.search(r"fixed slice .*?\*\*([0-9.]+)\*\*", card, re.S)
    assert m, f"{name}'s model card states no held-out loss on the fixed slice"
    return float(m.group(1))


def test_bundled_checkpoints_are_small():
    total = sum(f.stat().st_size for name in BUNDLED for f in BUNDLED[name].iterdir())
    assert total <= 30e6, f"bundled models take {total / 1e6:.1f} MB (> 30 MB)"


def test_gptoss_nano_keeps_every_feature(oss):
    c = oss.config
    assert c.layer_types == ("sliding_attention", "full_attention") * (c.num_hidden_layers // 2)
    assert c.sliding_window == 128 and c.num_local_experts == 32 and c.num_experts_per_tok == 4
    assert c.num_attention_heads > c.num_key_value_heads  # GQA
    assert c.rope_scaling.factor == 32 and c.rope_scaling.beta_fast == 32 and c.rope_scaling.beta_slow == 1
    assert c.rope_scaling.original_max_position_embeddings == 4096 and c.rope_theta == 150000
    assert c.attention_bias and not c.tie_word_embeddings and c.quant_method == "mxfp4"
    assert oss.blocks[0].mlp.experts.gate_up_proj_blocks.dtype == torch.uint8  # shipped and kept in MXFP4
    assert not torch.equal(oss.blocks[0].attn.sinks, torch.zeros_like(oss.blocks[0].attn.sinks))  # learned


@pytest.mark.parametrize("name", ["gpt-oss-nano", "gpt2-nano"])
def test_nano_matches_transformers(name, oss, gpt2):
    ours = oss if name == "gpt-oss-nano" else gpt2
    ref = (hf_gptoss if name == "gpt-oss-nano" else hf_gpt2)(BUNDLED[name])
    ids = torch.tensor(ours.tokenizer.encode(SLICE))[:300]  # > 2 windows of 128
    with torch.no_grad():
        assert_close(ours(ids), ref(ids[None]).logits[0], f"{name} logits")


@pytest.mark.parametrize("name", ["gpt-oss-nano", "gpt2-nano"])
def test_card_heldout_loss_is_reproduced(name, oss, gpt2):
    model = oss if name == "gpt-oss-nano" else gpt2
    measured, stated = heldout_loss(model, SLICE), card_slice_loss(name)
    assert abs(measured - stated) <= 0.05, f"{name}: card says {stated:.4f}, measured {measured:.4f}"
    # and it is a trained model: far below the loss of guessing uniformly over the vocabulary
    assert measured < 0.5 * math.log(model.config.vocab_size)


def test_gptoss_nano_routing_is_alive(oss):
    ids = torch.tensor(oss.tokenizer.encode(SLICE))[: 8 * 512].view(8, 512)
    _, cache = oss.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_expert_idx"))
    E = oss.config.num_local_experts
    for layer in range(oss.config.num_hidden_layers):
        share = torch.bincount(cache[f"blocks.{layer}.mlp.hook_expert_idx"].flatten(), minlength=E).float()
        share /= share.sum()
        entropy = -(share * share.clamp_min(1e-12).log()).sum() / math.log(E)
        assert share.min() >= 0.005, f"layer {layer}: expert {int(share.argmin())} gets {share.min():.2%} of routes"
        assert entropy >= 0.8, f"layer {layer}: normalised routing entropy {entropy:.3f} < 0.8"


def test_tokenizer_shared_and_harmony_ready(oss, gpt2):
    text = "def f(x):\n    return x  # naïve"
    assert oss.tokenizer.encode(text) == gpt2.tokenizer.encode(text)
    enc = oss.tokenizer.render_harmony("Hello")
    assert enc.ids[0] == oss.tokenizer.token_id("<|start|>")
    assert oss.tokenizer.decode(oss.tokenizer.encode(text)) == text
