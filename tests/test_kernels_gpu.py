"""The Triton fast paths (gptoss_viz/runtime/kernels) against the readable reference, on the GPU.

Skipped without CUDA. With TRITON_INTERPRET=1 the tests marked `interpretable` also run on the CPU through
Triton's interpreter, at toy sizes and in fp16 (the interpreter cannot load bf16): that checks the kernels' logic
(indexing, masks, tiles, the MXFP4 decode) where no GPU is present.

Tolerances. Both paths run in bf16 and round differently, so neither equals the other bit for bit. Each test
therefore computes a full-precision reference (fp32 maths on the very same bf16 inputs and exactly dequantized
MXFP4 weights) and requires the fast path to be no further from it than the reference bf16 path is (x 1.25,
plus a floor of 2e-3 relative error: below that both are at bf16's own resolution, 2^-8 = 3.9e-3 per value).
The fast path rounds less often (fp32 accumulation, one rounding of the SwiGLU output, the k expert outputs summed
in fp32), so it usually lands closer. Sink probabilities come out of an fp32 softmax in both paths over logits
built from exact bf16 products, so they must agree to 1e-4 absolute (only the summation order differs).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from gptoss_viz.runtime.configs import GptOssConfig
from gptoss_viz.runtime.gptoss import MoE, attend, attention_with_sinks, swiglu_clamped
from gptoss_viz.runtime.mxfp4 import mxfp4_dequant

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not CUDA
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float16  # the interpreter cannot load bf16
REL_FLOOR = 2e-3
SINK_ATOL = 1e-4

pytestmark = pytest.mark.gpu
interpretable = pytest.mark.interpretable

if INTERPRET:  # Triton 3.6's interpreter converts 1-element arrays with int(), which numpy >= 2.x refuses
    import triton.runtime.interpreter as _ti

    _patch = _ti._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        _patch(tensor, scope)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])

    _ti._patch_lang_tensor = _patch_lang_tensor


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_no_worse(fast: torch.Tensor, ref_lowp: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """fast must be finite and no further from `exact` than the reference path's low-precision result is."""
    assert fast.shape == exact.shape, f"{what}: shape {tuple(fast.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(fast).all(), f"{what}: non-finite values in the fast path's output"
    e_fast, e_ref = rel_err(fast, exact), rel_err(ref_lowp, exact)
    if not e_fast <= max(1.25 * e_ref, REL_FLOOR):
        diff = (fast.float() - exact.float()).abs()
        at = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{what}: fast path relative error {e_fast:.3g} vs the reference path's {e_ref:.3g}; "
                             f"worst |diff| {diff.max().item():.3g} at {at}: fast {fast.flatten()[:4].tolist()} "
                             f"exact {exact.flatten()[:4].tolist()}")


# ---------------------------------------------------------------------------------------------------------------
# MoE with in-kernel MXFP4 decoding

def moe_config(d: int, I: int, E: int, k: int) -> GptOssConfig:
    return GptOssConfig(vocab_size=16, hidden_size=d, intermediate_size=I, num_hidden_layers=1, num_attention_heads=1,
                        num_key_value_heads=1, head_dim=16, num_local_experts=E, num_experts_per_tok=k,
                        sliding_window=128, layer_types=("sliding_attention",), max_position_embeddings=4096,
                        quant_method="mxfp4")


def random_moe(d, I, E, k, seed) -> MoE:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    with torch.device(DEVICE):
        moe = MoE(moe_config(d, I, E, k), packed=True)
    ex = moe.experts
    for name in ("gate_up_proj", "down_proj"):
        blocks = getattr(ex, name + "_blocks")
        blocks.copy_(torch.randint(0, 256, blocks.shape, generator=g, device=DEVICE, dtype=torch.uint8))
        scales = getattr(ex, name + "_scales")  # all codes over a range of exponents; rows rms ~ 1/sqrt(fan-in)
        scales.copy_(torch.randint(117, 123, scales.shape, generator=g, device=DEVICE, dtype=torch.uint8))
    ex.gate_up_proj_bias.data = (0.5 * torch.randn(ex.gate_up_proj_bias.shape, generator=g, device=DEVICE)).to(DTYPE)
    ex.down_proj_bias.data = (0.1 * torch.randn(ex.down_proj_bias.shape, generator=g, device=DEVICE)).to(DTYPE)
    return moe


def moe_exact(moe: MoE, x, idx, weight) -> torch.Tensor:
    """fp32 maths on the same inputs: weights dequantized exactly, one expert at a time."""
    ex = moe.experts
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(ex.gate_up_proj_bias.shape[0]):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if len(tok) == 0:
            continue
        w1 = mxfp4_dequant(ex.gate_up_proj_blocks[e], ex.gate_up_proj_scales[e], torch.float32)
        w2 = mxfp4_dequant(ex.down_proj_blocks[e], ex.down_proj_scales[e], torch.float32)
        h = x[tok].float() @ w1.T + ex.gate_up_proj_bias[e].float()
        y = swiglu_clamped(h, ex.limit, ex.alpha) @ w2.T + ex.down_proj_bias[e].float()
        out.index_add_(0, tok, y * weight[tok, slot].float()[:, None])
    return out


MOE_CASES = ([(2880, 2880, 32, 4, n) for n in (1, 7, 37, 333, 1023)] + [(2880, 2880, 128, 4, n) for n in (5, 129)]
             if CUDA else [(64, 32, 8, 2, n) for n in (1, 7, 37)])


@interpretable
@pytest.mark.parametrize("d,I,E,k,N", MOE_CASES)
def test_mxfp4_moe_matches_dequantized_matmul(d, I, E, k, N):
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    moe = random_moe(d, I, E, k, seed=N)
    g = torch.Generator(device=DEVICE).manual_seed(1000 + N)
    x = torch.randn(N, d, generator=g, device=DEVICE).to(DTYPE)
    logits = torch.randn(N, E, generator=g, device=DEVICE)
    if N * k >= E:  # every expert gets at least one token (token e // k is sent to expert e), so all are checked
        e = torch.arange(E, device=DEVICE)
        logits[e // k, e] += 100.0
    idx = logits.topk(k, -1).indices  # k distinct experts per token
    weight = torch.randn(N, k, generator=g, device=DEVICE).softmax(-1).to(DTYPE)
    ex = moe.experts
    fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                     ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)  # the readable reference path, same dtype
    exact = moe_exact(moe, x, idx, weight)
    check_no_worse(fast, ref, exact, f"MoE d={d} I={I} E={E} k={k} N={N}")


@interpretable
def test_mxfp4_moe_skewed_routing():
    """All tokens on a few experts (several tiles for one expert, most experts empty), and every E2M1 code."""
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    d, I, E, k, N = (2880, 2880, 32, 4, 300) if CUDA else (64, 32, 8, 2, 40)
    moe = random_moe(d, I, E, k, seed=7)
    g = torch.Generator(device=DEVICE).manual_seed(7)
    x = (3 * torch.randn(N, d, generator=g, device=DEVICE)).to(DTYPE)  # large enough to hit the SwiGLU clamp
    idx = torch.arange(k, device=DEVICE).repeat(N, 1)  # experts 0..k-1 for every token
    idx[::3] = torch.arange(E - k, E, device=DEVICE)
    weight = torch.full((N, k), 1.0 / k, device=DEVICE, dtype=DTYPE)
    ex = moe.experts
    fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                     ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(fast, ref, moe_exact(moe, x, idx, weight), "MoE, skewed routing")


# ---------------------------------------------------------------------------------------------------------------
# Attention with sinks

ATTN_SHAPE = (64, 8, 64) if CUDA else (4, 2, 16)  # H, K, D
ATTN_T = (1, 100, 128, 129, 300, 1000) if CUDA else (1, 20, 70)
ATTN_WINDOWS = (None, 128, 16) if CUDA else (None, 16)


@interpretable
@pytest.mark.parametrize("window", ATTN_WINDOWS, ids=lambda w: f"window{w}")
@pytest.mark.parametrize("T", ATTN_T)
def test_attention_kernel_matches_reference(T, window):
    from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused

    H, K, D = ATTN_SHAPE
    g = torch.Generator(device=DEVICE).manual_seed(T * 7 + (window or 0))
    q, k, v = (torch.randn(T, n, D, generator=g, device=DEVICE).to(DTYPE) for n in (H, K, K))
    sinks = (2 + 2 * torch.randn(H, generator=g, device=DEVICE)).to(DTYPE)
    out, sink_prob = attention_with_sinks_fused(q, k, v, sinks, window, want_sink=True)
    pattern, sink_ref = attention_with_sinks(q, k, sinks, window)  # the reference path (fp32 softmax)
    ref = attend(pattern, v)  # pattern cast to bf16, as the model does
    exact = attend(pattern, v.float())
    where = f"attention T={T} window={window}"
    check_no_worse(out, ref, exact, where)
    worst = (sink_prob - sink_ref).abs().max().item()
    assert worst <= SINK_ATOL, f"{where}: sink probability differs by {worst:.3g}"
    no_sink, _ = attention_with_sinks_fused(q, k, v, sinks, window, want_sink=False)
    assert torch.equal(no_sink, out), f"{where}: asking for the sink probability changed the output"


@interpretable
def test_attention_kernel_batched_and_strided():
    """A leading batch dimension, and q/k/v that are views into one fused projection (non-contiguous)."""
    from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused

    H, K, D = ATTN_SHAPE
    B, T = 2, (200 if CUDA else 40)
    g = torch.Generator(device=DEVICE).manual_seed(5)
    qkv = torch.randn(B, T, H + 2 * K, D, generator=g, device=DEVICE).to(DTYPE)
    q, k, v = qkv.split([H, K, K], dim=-2)
    sinks = torch.randn(H, generator=g, device=DEVICE).to(DTYPE)
    out, sp = attention_with_sinks_fused(q, k, v, sinks, 16, want_sink=True)
    pattern, sink_ref = attention_with_sinks(q, k, sinks, 16)
    check_no_worse(out, attend(pattern, v), attend(pattern, v.float()), "batched attention")
    assert (sp - sink_ref).abs().max().item() <= SINK_ATOL


# ---------------------------------------------------------------------------------------------------------------
# The whole model: fast path against the reference path on the same weights, full 20b layer shapes

@pytest.mark.skipif(not CUDA, reason="full-size layers need the GPU")
def test_fast_path_equals_reference_at_20b_layer_shapes():
    """Each layer of a 20b-shaped model (one sliding, one full) on the same input through the fast path, the
    reference path and fp32; then the whole model, which path it reports, and a pattern hook forcing one layer
    back to the reference path while the other stays fast."""
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=2, vocab_size=2048)
    model = random_packed_model(cfg, "cuda", seed=3)
    T = 300  # longer than the 128-token window, not a multiple of any tile
    g = torch.Generator("cuda").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (T,), device="cuda", generator=g)
    cos, sin = model.rope(T, "cuda")
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            x = (torch.randn(T, cfg.hidden_size, device="cuda", generator=g)).to(DTYPE)
            attn = block.attn
            outs = {}
            for on in (True, False):
                attn.use_kernels = on
                outs[on] = attn(x, cos, sin)
                assert attn.last_path == ("triton" if on else "reference")
            exact = copy.deepcopy(attn).float()(x.float(), cos, sin)
            check_no_worse(outs[True], outs[False], exact, f"layer {i} ({attn.window=}) attention")
            # MoE: the router is the same bf16 linear on both paths, so both see the same experts
            mlp = block.mlp
            weight, idx = mlp.router(x).topk(cfg.num_experts_per_tok, -1)
            weight = weight.softmax(-1)
            from gptoss_viz.runtime.kernels.moe import moe_mxfp4

            ex = mlp.experts
            fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                             ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
            check_no_worse(fast, mlp.combine(x, idx, weight), moe_exact(mlp, x, idx, weight), f"layer {i} MoE")

    # The whole model: routing decisions can flip on bf16 ties between the paths, so compare loosely here
    names = ["blocks.0.attn.hook_sink_prob", "blocks.1.attn.hook_sink_prob"]
    model.use_kernels = True
    logits_f, fast = model.run_with_cache(ids, names)
    assert model.last_path == {"attention": "triton", "moe": "triton"}, model.last_path
    model.use_kernels = False
    logits_r, ref = model.run_with_cache(ids, names)
    assert model.last_path == {"attention": "reference", "moe": "reference"}, model.last_path
    worst = (fast[names[0]] - ref[names[0]]).abs().max().item()  # layer 0 sees identical inputs on both paths
    assert worst <= SINK_ATOL, f"layer 0 sink probability: fast and reference differ by {worst:.3g}"
    err = rel_err(logits_f, logits_r)
    top1 = (logits_f.argmax(-1) == logits_r.argmax(-1)).float().mean().item()
    assert err < 0.05 and top1 > 0.9, f"whole model: logits differ by {err:.3g} (relative), top-1 agrees {top1:.3f}"

    # A pattern hook needs the full map: that layer takes the reference path, the other stays fast, and says so.
    model.use_kernels = True
    _, cache = model.run_with_cache(ids, ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_sink_prob"])
    assert model.last_path["attention"].startswith("mixed (triton: layers [1]"), model.last_path
    assert model.last_path["moe"] == "triton"
    rows = cache["blocks.0.attn.hook_pattern"].sum(-1) + cache["blocks.0.attn.hook_sink_prob"]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5), "pattern rows + sink do not sum to 1"
