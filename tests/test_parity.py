"""Our models against Hugging Face transformers on the same Hub-format weights, fp32, layer by layer.

transformers reads the very files our loader reads (MXFP4 experts dequantized by its own code), so a wrong
nibble order, key mapping, rotation or softmax on our side shows up here as a named layer and tensor.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TEXT, make_gptoss_dir
from gptoss_viz import load_model

TOL = 1e-4


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != transformers' {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs()
    worst = diff.max().item()
    if not worst <= tol:
        at = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{what}: max |ours - transformers| = {worst:.3g} > {tol} at {at}; "
                             f"ours {ours.flatten()[:4].tolist()} vs {ref.flatten()[:4].tolist()}")


def hf_gptoss(path):
    from transformers import GptOssForCausalLM, Mxfp4Config

    m = GptOssForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                          quantization_config=Mxfp4Config(dequantize=True))
    return m.eval()


def hf_gpt2(path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def gptoss_pair(gptoss_dir):
    return load_model(gptoss_dir, dtype=torch.float32), hf_gptoss(gptoss_dir)


def test_gptoss_matches_transformers_layer_by_layer(gptoss_pair):
    ours, hf = gptoss_pair
    cfg = ours.config
    ids = torch.tensor(ours.tokenizer.encode(TEXT[:160]))
    T = len(ids)
    assert T > 3 * cfg.sliding_window, "the sequence must be longer than the window for the window to matter"
    logits, cache = ours.run_with_cache(ids)
    with torch.no_grad():
        ref = hf(ids[None], output_attentions=True, output_router_logits=True, output_hidden_states=True)
    assert_close(logits, ref.logits[0], "logits")
    assert_close(cache["hook_embed"], ref.hidden_states[0][0], "embeddings")
    for i in range(cfg.num_hidden_layers):
        b = f"blocks.{i}"
        assert_close(cache[f"{b}.attn.hook_pattern"], ref.attentions[i][0], f"layer {i} attention pattern")
        router = ref.router_logits[i].view(T, -1)
        assert_close(cache[f"{b}.mlp.hook_router_logits"], router, f"layer {i} router logits")
        ref_idx = router.topk(cfg.num_experts_per_tok, -1).indices
        assert torch.equal(cache[f"{b}.mlp.hook_expert_idx"], ref_idx), f"layer {i}: chosen experts differ"
        if i < cfg.num_hidden_layers - 1:  # the last entry of hidden_states is after the final norm
            assert_close(cache[f"{b}.hook_resid_post"], ref.hidden_states[i + 1][0], f"layer {i} residual out")


def test_gptoss_fixture_exercises_every_mechanism(gptoss_pair):
    """The parity test only means something if sinks, the clamp and both layer types are actually in play."""
    ours, _ = gptoss_pair
    ids = torch.tensor(ours.tokenizer.encode(TEXT[:160]))
    _, cache = ours.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_sink_prob"))
    sink = torch.stack(list(cache.values()))
    assert 0.05 < sink.mean() < 0.95, f"sink mass {sink.mean():.3f}: sinks are not exercised"
    # pre-activations of expert 0 in layer 0: some exceed the SwiGLU clamp
    x = ours.blocks[0].post_attention_layernorm(ours.embed_tokens(ids))
    w1, _ = ours.blocks[0].mlp.experts.weights(0, torch.float32)
    h = torch.nn.functional.linear(x, w1, ours.blocks[0].mlp.experts.gate_up_proj_bias[0])
    assert (h.abs() > ours.config.swiglu_limit).any(), "the SwiGLU clamp is never reached"


def test_gptoss_bf16_default_load_matches_fp32(gptoss_dir):
    """The default load keeps the checkpoint's bf16; its logits stay at least as close to fp32 as transformers'
    own bf16 run on the same weights (random routers flip some top-k choices under bf16 rounding in both)."""
    m16, m32 = load_model(gptoss_dir), load_model(gptoss_dir, dtype=torch.float32)
    assert m16.embed_tokens.weight.dtype == torch.bfloat16
    assert m16.blocks[0].mlp.experts.gate_up_proj_blocks.dtype == torch.uint8
    from transformers import GptOssForCausalLM, Mxfp4Config

    hf16 = GptOssForCausalLM.from_pretrained(str(gptoss_dir), dtype=torch.bfloat16, attn_implementation="eager",
                                             quantization_config=Mxfp4Config(dequantize=True)).eval()
    ids = torch.tensor(m32.tokenizer.encode(TEXT[:60]))
    with torch.no_grad():
        ours, ref, theirs = m16(ids).float(), m32(ids), hf16(ids[None]).logits[0].float()
    ours_err, their_err = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert ours_err <= their_err, f"our bf16 error {ours_err:.3g} > transformers' bf16 error {their_err:.3g}"


def test_gptoss_unquantized_checkpoint_matches_transformers(tmp_path, tokenizer_json):
    """A checkpoint without quantization_config (experts as transformers' [E, in, out] tensors) loads too."""
    path = make_gptoss_dir(tmp_path, tokenizer_json, seed=3, quant_method=None, max_shard_bytes=None)
    ours = load_model(path, dtype=torch.float32)
    from transformers import GptOssForCausalLM

    hf = GptOssForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor(ours.tokenizer.encode(TEXT[:100]))
    with torch.no_grad():
        assert_close(ours(ids), hf(ids[None]).logits[0], "logits (unquantized experts)")


def test_gpt2_matches_transformers_layer_by_layer(gpt2_dir):
    ours, hf = load_model(gpt2_dir, dtype=torch.float32), hf_gpt2(gpt2_dir)
    ids = torch.tensor(ours.tokenizer.encode(TEXT[:150]))[: ours.config.n_positions]
    assert len(ids) <= ours.config.n_positions
    logits, cache = ours.run_with_cache(ids)
    with torch.no_grad():
        ref = hf(ids[None], output_attentions=True, output_hidden_states=True)
    assert_close(logits, ref.logits[0], "logits")
    for i in range(ours.config.n_layer):
        assert_close(cache[f"blocks.{i}.attn.hook_pattern"], ref.attentions[i][0], f"layer {i} attention pattern")
        if i < ours.config.n_layer - 1:
            assert_close(cache[f"blocks.{i}.hook_resid_post"], ref.hidden_states[i + 1][0], f"layer {i} residual")


def test_assert_close_reports_where(gptoss_pair):
    """The comparison itself can fail, and says where."""
    a = torch.zeros(3, 4)
    b = a.clone()
    b[1, 2] = 1.0
    with pytest.raises(AssertionError, match=r"layer 7 x: max .* = 1 > 0.0001 at \(1, 2\)"):
        assert_close(a, b, "layer 7 x")
