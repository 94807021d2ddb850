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
        w1, w2 = ex.weights(e, torch.float32)  # exact dequantization (in either order of the blocks)
        h = x[tok].float() @ w1.T + ex.gate_up_proj_bias[e].float()
        y = swiglu_clamped(h, ex.limit, ex.alpha) @ w2.T + ex.down_proj_bias[e].float()
        out.index_add_(0, tok, y * weight[tok, slot].float()[:, None])
    return out


def routed_inputs(N: int, d: int, E: int, k: int):
    """x [N, d], idx [N, k] (k distinct experts a token; every expert gets a token when N * k >= E, token e // k
    being sent to expert e, so all are checked) and routing weights [N, k]."""
    g = torch.Generator(device=DEVICE).manual_seed(1000 + N)
    x = torch.randn(N, d, generator=g, device=DEVICE).to(DTYPE)
    logits = torch.randn(N, E, generator=g, device=DEVICE)
    if N * k >= E:
        e = torch.arange(E, device=DEVICE)
        logits[e // k, e] += 100.0
    idx = logits.topk(k, -1).indices
    weight = torch.randn(N, k, generator=g, device=DEVICE).softmax(-1).to(DTYPE)
    return x, idx, weight


def skewed_case():
    """(moe, x, idx, weight): all tokens on a few experts (several tiles for one expert, most experts empty), inputs
    large enough to hit the SwiGLU clamp."""
    d, I, E, k, N = (2880, 2880, 32, 4, 300) if CUDA else (64, 32, 8, 2, 60)
    moe = random_moe(d, I, E, k, seed=7)
    g = torch.Generator(device=DEVICE).manual_seed(7)
    x = (3 * torch.randn(N, d, generator=g, device=DEVICE)).to(DTYPE)
    idx = torch.arange(k, device=DEVICE).repeat(N, 1)  # experts 0..k-1 for every token
    idx[::3] = torch.arange(E - k, E, device=DEVICE)
    weight = torch.full((N, k), 1.0 / k, device=DEVICE, dtype=DTYPE)
    return moe, x, idx, weight


MOE_CASES = ([(2880, 2880, 32, 4, n) for n in (1, 7, 37, 333, 1023)] + [(2880, 2880, 128, 4, n) for n in (5, 129)]
             if CUDA else [(64, 32, 8, 2, n) for n in (1, 7, 37)])


# kernel variants beside the tuned tables: (Tiles for gate_up and down, decode); see kernels/moe.py. Tile(bm, bn,
# bk, warps, stages, swap, nsub); the sub-tile variants give the two kernels different tile heights (two schedules).
def _tile(*args, **kw):
    from gptoss_viz.runtime.kernels.moe import Tile

    return Tile(*args, **kw)


MOE_VARIANTS = {"default": lambda: (None, None), "fp32-decode": lambda: (None, 0),
                "swap": lambda: ((_tile(32, 64, 64, 4, 3, True),) * 2, 0),
                "ptx-decode": lambda: ((_tile(64, 64, 64, 4, 3),) * 2, 2),
                "swap-ptx-decode": lambda: ((_tile(32, 128, 64, 8, 3, True),) * 2, 2),
                "ptx-decode-1mul": lambda: ((_tile(64, 64, 64, 4, 3),) * 2, 3),
                "swap-ptx-decode-1mul": lambda: ((_tile(32, 128, 64, 8, 3, True),) * 2, 3),
                "subtiles": lambda: ((_tile(16, 64, 64, 4, 3, nsub=3), _tile(32, 64, 64, 4, 3, nsub=2)), None),
                "subtiles-wide": lambda: ((_tile(64, 128, 64, 8, 3, nsub=3), _tile(16, 64, 64, 4, 3, nsub=2)), None)}


@interpretable
@pytest.mark.parametrize("variant", MOE_VARIANTS)
@pytest.mark.parametrize("d,I,E,k,N", MOE_CASES)
def test_mxfp4_moe_matches_dequantized_matmul(d, I, E, k, N, variant):
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    ex = moe.experts
    configs, decode = MOE_VARIANTS[variant]()
    if decode and not CUDA:
        pytest.skip("the PTX decodes build bf16 values, which the interpreter can neither hold nor run")
    fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                     ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                     configs=configs, decode=decode)
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)  # the readable reference path, same dtype
    exact = moe_exact(moe, x, idx, weight)
    check_no_worse(fast, ref, exact, f"MoE {variant} d={d} I={I} E={E} k={k} N={N}")


@pytest.mark.skipif(not CUDA, reason="bf16 bit patterns need the GPU")
@pytest.mark.parametrize("decode,scales", [(0, (1, 240)), (2, (1, 254)), (3, (0, 128))])
def test_mxfp4_decode_is_exact(decode, scales):
    """The in-kernel decode against mxfp4_dequant, bit for bit: every byte value under every scale of the range
    that decode variant claims."""
    import triton
    import triton.language as tl

    from gptoss_viz.runtime.kernels.moe import _dequant_tile

    @triton.jit
    def decode_kernel(blk_ptr, scl_ptr, out_ptr, BN: tl.constexpr, BK: tl.constexpr, DECODE: tl.constexpr):
        pid = tl.program_id(0)
        rn = pid * BN + tl.arange(0, BN)
        w = _dequant_tile(blk_ptr, scl_ptr, rn, rn >= 0, 0, BK // 2, BK // 32, BN, BK, tl.bfloat16, DECODE)
        tl.store(out_ptr + rn[:, None] * BK + tl.arange(0, BK)[None, :], w)

    lo, hi = scales
    n_scales = hi - lo + 1
    BN, BK = 16, 512  # each row: all 256 byte values (16 blocks of 32 values), one scale per block
    rows = BN * triton.cdiv(triton.cdiv(n_scales, BK // 32), BN)
    blocks = torch.arange(256, device="cuda", dtype=torch.int32).to(torch.uint8)
    blocks = blocks.repeat(rows, 1).view(rows, BK // 32, 16)
    scl = (lo + torch.arange(rows * (BK // 32), device="cuda") % n_scales).to(torch.uint8).view(rows, BK // 32)
    out = torch.empty(rows, BK, device="cuda", dtype=torch.bfloat16)
    decode_kernel[(rows // BN,)](blocks, scl, out, BN=BN, BK=BK, DECODE=decode)
    want = mxfp4_dequant(blocks, scl, torch.float32)  # [rows, BK]: exact in fp32, and bf16 holds every value
    assert torch.equal(want.to(torch.bfloat16).float(), want), "test values not representable in bf16"
    bad = out.float() != want
    assert not bad.any(), (f"decode {decode}: {int(bad.sum())} values differ, first at {bad.nonzero()[0].tolist()}: "
                           f"{out.float()[bad][:4].tolist()} vs {want[bad][:4].tolist()}")


@interpretable
@pytest.mark.parametrize("variant", ["default", "subtiles", "subtiles-wide"])
def test_mxfp4_moe_skewed_routing(variant):
    """All tokens on a few experts (several tiles for one expert, most experts empty, every number of non-empty
    sub-tiles), and every E2M1 code."""
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    moe, x, idx, weight = skewed_case()
    ex = moe.experts
    configs, decode = MOE_VARIANTS[variant]()
    fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                     ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                     configs=configs, decode=decode)
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(fast, ref, moe_exact(moe, x, idx, weight), f"MoE {variant}, skewed routing")


# The Hopper kernels (kernels/moe_hopper.py): decoded weights as wgmma's register operand, blocks re-arranged

HOPPER = CUDA and torch.cuda.get_device_capability() == (9, 0)


def _htile(*args):
    from gptoss_viz.runtime.kernels.moe_hopper import HopperTile

    return HopperTile(*args)


# HopperTile(bt, bx, stages[, maxnreg[, narrow[, halves]]]): the rule's choice, every tile of its table, no
# overflow rows at the large ones, and 128 output features a program (halves 2: with down's 2880 features, the
# last program's second half lies past them)
HOPPER_TILES = {"auto": lambda: None, "16": lambda: _htile(16, 0, 4), "16+16": lambda: _htile(16, 16, 4),
                "32+32": lambda: _htile(32, 32, 4), "64+32": lambda: _htile(64, 32, 4),
                "64+32 s2 r128": lambda: _htile(64, 32, 2, 128), "64+32 s3 r128": lambda: _htile(64, 32, 3, 128),
                "64+64 s2 r128": lambda: _htile(64, 64, 2, 128),
                "128": lambda: _htile(128, 0, 3), "128+32": lambda: _htile(128, 32, 3),
                "128+64": lambda: _htile(128, 64, 3),
                "32+32 h2": lambda: _htile(32, 32, 4, 0, True, 2),
                "64+32 s3 h2 r168": lambda: _htile(64, 32, 3, 168, True, 2),
                "128+32 h2": lambda: _htile(128, 32, 3, 0, True, 2),
                # moe_hopper_duo's kernels (two warp groups and a loader warp a program, persistent; Triton 3.7)
                "128+64 duo": lambda: _htile(128, 64, 5, 0, False, 1, 1, True),
                "128+32 duo s2": lambda: _htile(128, 32, 2, 0, False, 1, 1, True)}


def skip_without_duo(tile):
    """Skip the test where `tile` is a duo tile and this Triton has no duo kernels (only 3.7's Gluon)."""
    from gptoss_viz.runtime.kernels.moe_hopper import CLUSTERS

    if tile is not None and tile.duo and not CLUSTERS:
        pytest.skip("moe_hopper_duo's kernels need Triton 3.7's Gluon (moe_hopper.CLUSTERS)")


HOPPER_CASES = [(2880, 2880, 32, 4, n) for n in (1, 7, 37, 333, 1023)] + [(2880, 2880, 128, 4, 129),
                                                                          (2880, 2880, 128, 4, 1100),
                                                                          (128, 64, 8, 2, 37)]


def hopper_moe(moe: MoE, x, idx, weight, tile=None, one_multiply=True):
    """moe_mxfp4_hopper on a copy of moe's experts re-arranged into the Hopper order (moe keeps its own); with the
    one-multiply decode by default, which the module takes at random_moe's scales (117..122)."""
    from gptoss_viz.runtime.kernels.moe_hopper import moe_mxfp4_hopper
    from gptoss_viz.runtime.mxfp4 import to_hopper_order, to_hopper_scales

    ex = moe.experts
    return moe_mxfp4_hopper(x, idx, weight, to_hopper_order(ex.gate_up_proj_blocks),
                            to_hopper_scales(ex.gate_up_proj_scales), ex.gate_up_proj_bias,
                            to_hopper_order(ex.down_proj_blocks), to_hopper_scales(ex.down_proj_scales),
                            ex.down_proj_bias, ex.limit, ex.alpha, tile=tile, one_multiply=one_multiply)


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("tile", HOPPER_TILES)
@pytest.mark.parametrize("d,I,E,k,N", HOPPER_CASES)
def test_hopper_moe_matches_dequantized_matmul(d, I, E, k, N, tile):
    """Every expert hit (N >= E/k), odd token counts, tiles with and without the overflow rows; also against
    moe.py's kernel (same decode bits, fp32 accumulation: on an H200 the two agreed bit for bit)."""
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    skip_without_duo(HOPPER_TILES[tile]())
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    fast = hopper_moe(moe, x, idx, weight, HOPPER_TILES[tile]())
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    where = f"Hopper MoE tile {tile} d={d} I={I} E={E} k={k} N={N}"
    check_no_worse(fast, ref, moe_exact(moe, x, idx, weight), where)
    ex = moe.experts
    triton_out = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                           ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
    diff = rel_err(fast, triton_out)
    assert diff <= REL_FLOOR, f"{where}: differs from moe.py's kernel by {diff:.3g}"


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("tile", ["128+32", "128+64", "128", "64+32 s3 r128", "32+32", "16+16"])
@pytest.mark.parametrize("stages", [None, 2])
@pytest.mark.parametrize("d,I,E,k,N", [(2880, 2880, 32, 4, n) for n in (7, 333, 1023)] + [(128, 64, 8, 2, 37)])
def test_hopper_moe_in_clusters_equals_single_programs(d, I, E, k, N, tile, stages):
    """HopperTile.cluster 2: two programs of a cluster share each activation tile (one TMA multicast) and each takes
    its half of 128 output features. Each CTA computes what a program of 64 features computes, in the same order,
    so the outputs must be the same bits as cluster=1's (narrow tiles off in both: clusters take none); down's 2880
    features leave the last cluster's second half past them."""
    from gptoss_viz.runtime.kernels.moe_hopper import CLUSTERS

    if not CLUSTERS:
        pytest.skip("clusters of CTAs need Triton 3.7's Gluon (moe_hopper.CLUSTERS)")
    t = HOPPER_TILES[tile]()._replace(narrow=False)
    if stages:
        t = t._replace(stages=stages)
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    one = hopper_moe(moe, x, idx, weight, tile=t)
    two = hopper_moe(moe, x, idx, weight, tile=t._replace(cluster=2))
    where = f"tile {tile} stages {t.stages} d={d} I={I} E={E} k={k} N={N}"
    assert torch.equal(one, two), f"{where}: clusters differ by {rel_err(two, one):.3g}"
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(two, ref, moe_exact(moe, x, idx, weight), where)


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("N", [1500, 3000])
def test_hopper_moe_rule_with_clusters_for_gate_up_equals_single_programs(N):
    """Without a `tile`, 20b at 1024-4095 tokens runs gate_up as clusters of two (gate_up_cluster) and down as
    hopper_tile chose: the same bits as both launches at hopper_tile's tile."""
    from gptoss_viz.runtime.kernels.hopper_tiles import gate_up_cluster, hopper_tile
    from gptoss_viz.runtime.kernels.moe_hopper import CLUSTERS

    if not CLUSTERS:
        pytest.skip("clusters of CTAs need Triton 3.7's Gluon (moe_hopper.CLUSTERS)")
    d, I, E, k = 2880, 2880, 32, 4
    t = hopper_tile(N * k / E, E)
    assert gate_up_cluster(t, True).cluster == 2, "the rule takes no cluster here: the test would compare nothing"
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    rule = hopper_moe(moe, x, idx, weight)
    single = hopper_moe(moe, x, idx, weight, tile=t)
    assert torch.equal(rule, single), f"N={N}: the rule's output differs by {rel_err(rule, single):.3g}"


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("tile", ["128+64", "128+32"])
@pytest.mark.parametrize("stages", [5, 2])
@pytest.mark.parametrize("d,I,E,k,N", [(2880, 2880, 32, 4, n) for n in (7, 333, 1023, 4500)] + [(128, 64, 8, 2, 37)])
def test_hopper_moe_duo_equals_single_programs(d, I, E, k, N, tile, stages):
    """HopperTile.duo: moe_hopper_duo's two warp groups compute what two programs of 64 features compute, in the
    same order, so the outputs must be the same bits as moe_hopper's at the same tile (narrow tiles off in both).
    4500 tokens make ~40 tiles a program of the persistent grid, so the stages and their barriers' phases wrap
    over tiles (more often with 2 stages); d=128, I=64 make one and two K steps; down's 2880 features leave the last
    program's second warp group past them."""
    t = HOPPER_TILES[tile]()._replace(narrow=False, stages=3)
    duo = t._replace(duo=True, stages=stages)
    skip_without_duo(duo)
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    one = hopper_moe(moe, x, idx, weight, tile=t)
    two = hopper_moe(moe, x, idx, weight, tile=duo)
    where = f"tile {tile} duo, stages {stages} d={d} I={I} E={E} k={k} N={N}"
    assert torch.equal(one, two), f"{where}: differs from single programs by {rel_err(two, one):.3g}"
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(two, ref, moe_exact(moe, x, idx, weight), where)


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
def test_hopper_moe_rule_takes_the_duo_kernels_for_long_prompts():
    """Without a `tile`, 20b at 4500 tokens (a mean of 562 rows an expert) runs both launches as moe_hopper_duo's
    kernels (duo_tile): the same bits as hopper_tile's own 128+64 tile in moe_hopper's kernel."""
    from gptoss_viz.runtime.kernels.hopper_tiles import duo_tile, hopper_tile

    d, I, E, k, N = 2880, 2880, 32, 4, 4500
    t = hopper_tile(N * k / E, E)
    skip_without_duo(duo_tile(t, True))
    assert duo_tile(t, True).duo, "the rule takes no duo tile here: the test would compare nothing"
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    rule = hopper_moe(moe, x, idx, weight)
    single = hopper_moe(moe, x, idx, weight, tile=t)
    assert torch.equal(rule, single), f"N={N}: the rule's output differs by {rel_err(rule, single):.3g}"


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("N", [37, 1023])
def test_moe_slots_in_bf16_against_fp32_slots(N):
    """The down kernels write each token's k weighted expert outputs in bf16 (half the traffic of fp32, which
    they wrote before): against fp32 slots the sum moves by at most bf16's own resolution, both stay no worse than
    the reference path, and moe.py's and the Hopper kernels still agree."""
    from gptoss_viz.runtime.kernels.moe import moe_mxfp4

    d, I, E, k = 2880, 2880, 32, 4
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    ex = moe.experts
    args = (x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
            ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
    slots16, slots32 = moe_mxfp4(*args), moe_mxfp4(*args, slot_dtype=torch.float32)
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    exact = moe_exact(moe, x, idx, weight)
    check_no_worse(slots16, ref, exact, f"bf16 slots N={N}")
    check_no_worse(slots32, ref, exact, f"fp32 slots N={N}")
    # two roundings of the same sums to bf16 differ by at most its resolution (2^-8 relative)
    assert rel_err(slots16, slots32) <= 2.0 ** -8, "bf16 slots moved the sum beyond bf16's resolution"
    assert not torch.equal(slots16, slots32) or N < 64, "the slot dtype changed nothing (was it passed on?)"
    assert rel_err(hopper_moe(moe, x, idx, weight), slots16) <= REL_FLOOR, "Hopper and moe.py kernels disagree"


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("one_multiply,scales", [(False, (1, 252)), (True, (0, 128))])
def test_hopper_decode_is_exact(one_multiply, scales):
    """moe_hopper's decode as its wgmma reads it, bit for bit against mxfp4_dequant: rows of all 256 byte values
    (K = 512, in mxfp4.to_hopper_order), one scale a row, every scale of the range that decode claims. Each K
    step's decoded [64, 64] A operand is multiplied by an identity matrix in shared memory (fp32, exact). (Up to
    252 for two multiplies: from 253 on the largest codes are inf, in mxfp4_dequant's fp32 too, and inf times the
    identity's zeros is NaN.)"""
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia import hopper

    from gptoss_viz.runtime.kernels import moe_hopper as mh
    from gptoss_viz.runtime.mxfp4 import to_hopper_order

    @gluon.jit
    def decode_kernel(w_ptr, s_ptr, out_ptr, K: gl.constexpr, BL: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
        BO: gl.constexpr = 64
        ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
        AL: gl.constexpr = gl.DotOperandLayout(0, ACC, 2)
        WL: gl.constexpr = mh._word_layout(BO)
        r0 = gl.program_id(0) * BO
        j = gl.program_id(1)  # the K step
        # its words [BO, 4 (t), 2 (p)] (word 2t + p of the row's 8), as _smem_words gives them, from global memory
        L2: gl.constexpr = gl.SliceLayout(2, WL)
        r = gl.arange(0, BO, layout=gl.SliceLayout(1, L2))
        t = gl.arange(0, 4, layout=gl.SliceLayout(0, L2))
        p = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL)))
        rt = gl.expand_dims(gl.expand_dims(r0 + r, 1) * (K // 8) + j * 8 + 2 * gl.expand_dims(t, 0), 2)
        word = gl.load(w_ptr + rt + gl.expand_dims(gl.expand_dims(p, 0), 1))
        # and its two scales a row [BO, 1, 2], as _smem_scales gives them
        SL: gl.constexpr = gl.SliceLayout(1, WL)
        rs = gl.arange(0, BO, layout=gl.SliceLayout(1, SL))
        ps = gl.arange(0, 2, layout=gl.SliceLayout(0, SL))
        sc = gl.load(s_ptr + gl.expand_dims(r0 + rs, 1) * (K // 32) + 2 * j + gl.expand_dims(ps, 0))
        w = mh._decode(word, gl.expand_dims(sc.to(gl.int32), 1), BO, AL, WL, ONE_MULTIPLY)
        EL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        ri = gl.arange(0, 64, layout=gl.SliceLayout(1, EL))
        ci = gl.arange(0, 64, layout=gl.SliceLayout(0, EL))
        eye = (gl.expand_dims(ri, 1) == gl.expand_dims(ci, 0)).to(gl.bfloat16)
        b_smem = gl.allocate_shared_memory(gl.bfloat16, [64, 64], BL, eye)
        hopper.fence_async_shared()
        acc = hopper.warpgroup_mma(w, b_smem.permute((1, 0)), gl.zeros([BO, 64], gl.float32, ACC), use_acc=False)
        OL: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
        acc = gl.convert_layout(acc, OL)
        ro = gl.arange(0, BO, layout=gl.SliceLayout(1, OL))
        co = gl.arange(0, 64, layout=gl.SliceLayout(0, OL))
        gl.store(out_ptr + gl.expand_dims(r0 + ro, 1) * K + j * 64 + gl.expand_dims(co, 0), acc)

    lo, hi = scales
    n = hi - lo + 1
    K = 512  # 16 blocks of 32 values: the 256 byte values once
    rows = 64 * triton.cdiv(n, 64)
    blocks = torch.arange(256, device="cuda", dtype=torch.int32).to(torch.uint8).repeat(rows, 1).view(rows, 16, 16)
    scl = (lo + torch.arange(rows, device="cuda") % n).to(torch.uint8)[:, None].expand(rows, 16).contiguous()
    words = to_hopper_order(blocks).view(torch.int32)  # [rows, K / 8]
    out = torch.empty(rows, K, device="cuda", dtype=torch.float32)
    decode_kernel[(rows // 64, K // 64)](words, scl, out, K=K, BL=mh._rows_layout(64), ONE_MULTIPLY=one_multiply,
                                         num_warps=4)
    want = mxfp4_dequant(blocks, scl, torch.float32)  # exact in fp32, and bf16 holds every value
    assert torch.equal(want.to(torch.bfloat16).float(), want), "test values not representable in bf16"
    bad = out != want
    assert not bad.any(), (f"one_multiply={one_multiply}: {int(bad.sum())} values differ, first at "
                           f"{bad.nonzero()[0].tolist()}: {out[bad][:4].tolist()} vs {want[bad][:4].tolist()}")


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("tile", ["auto", "16+16", "32+32 h2", "64+32 s2 r128", "128+32", "128+64"])
@pytest.mark.parametrize("d,I,E,k,N", [(2880, 2880, 32, 4, 333), (2880, 2880, 128, 4, 129)])
def test_hopper_one_multiply_equals_two(d, I, E, k, N, tile):
    """At scales <= 128 the one-multiply decode gives the very bits of the two-multiply one, whole layers through."""
    moe = random_moe(d, I, E, k, seed=N)
    x, idx, weight = routed_inputs(N, d, E, k)
    one = hopper_moe(moe, x, idx, weight, HOPPER_TILES[tile](), one_multiply=True)
    two = hopper_moe(moe, x, idx, weight, HOPPER_TILES[tile](), one_multiply=False)
    assert torch.equal(one, two), f"tile {tile}: max |diff| {(one - two).abs().max().item():.3g}"


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("tile", ["auto", "16+16", "64+32 s2 r128", "64+32 s3 r128", "128+32", "128+64", "32+32 h2",
                                  "128+32 h2", "128+64 duo", "128+32 duo s2"])
def test_hopper_moe_skewed_routing(tile):
    """All tokens on a few experts: many tiles for one expert, tiles with and without overflow rows, empty experts."""
    skip_without_duo(HOPPER_TILES[tile]())
    moe, x, idx, weight = skewed_case()
    fast = hopper_moe(moe, x, idx, weight, HOPPER_TILES[tile]())
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(fast, ref, moe_exact(moe, x, idx, weight), f"Hopper MoE tile {tile}, skewed routing")


def counted_inputs(counts: list[int], d: int, k: int, seed: int):
    """x [N, d], idx [N, k] and weights [N, k] that send exactly counts[e] rows to expert e (sum divisible by k;
    a token may see one expert twice, which the MoE sums like two)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    flat = torch.repeat_interleave(torch.arange(len(counts), device=DEVICE), torch.tensor(counts, device=DEVICE))
    assert flat.numel() % k == 0
    idx = flat[torch.randperm(flat.numel(), generator=g, device=DEVICE)].view(-1, k)
    N = idx.shape[0]
    x = torch.randn(N, d, generator=g, device=DEVICE).to(DTYPE)
    weight = torch.randn(N, k, generator=g, device=DEVICE).softmax(-1).to(DTYPE)
    return x, idx, weight


# rows an expert around every width the 128+32 tile takes: BT / 4 = 32, BT / 2 = 64, BT = 128, BT + BX = 160, and
# past it (a second tile of 1..160 rows); two empty experts
NARROW_COUNTS = [1, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 127, 128, 129, 159, 160, 161, 175, 192, 193, 224,
                 225, 289, 320, 321, 0, 0, 5, 70, 40, 22]


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("bt,bx,stages,maxnreg,halves", [(128, 32, 3, 0, 1), (128, 64, 3, 0, 1), (64, 32, 3, 128, 1),
                                                         (128, 32, 3, 0, 2)])
def test_hopper_narrow_tiles_equal_full_width(bt, bx, stages, maxnreg, halves):
    """Tiles of few rows take a narrower wgmma (bt / 4, bt / 2): bit for bit what the full-width tiles give (the
    same products summed in the same order), and within the reference's error of exact maths."""
    from gptoss_viz.runtime.kernels.moe_hopper import HopperTile

    moe = random_moe(2880, 2880, 32, 4, seed=5)
    x, idx, weight = counted_inputs(NARROW_COUNTS, 2880, 4, seed=5)
    narrow = hopper_moe(moe, x, idx, weight, HopperTile(bt, bx, stages, maxnreg, True, halves))
    wide = hopper_moe(moe, x, idx, weight, HopperTile(bt, bx, stages, maxnreg, False, halves))
    assert torch.equal(narrow, wide), f"narrow tiles {bt}+{bx}: max |diff| {(narrow - wide).abs().max().item():.3g}"
    with torch.no_grad():
        ref = moe.combine(x, idx, weight)
    check_no_worse(narrow, ref, moe_exact(moe, x, idx, weight), f"Hopper MoE narrow tiles {bt}+{bx}")


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
def test_moe_module_takes_the_hopper_kernels_and_keeps_its_weights():
    """MoE.forward on bf16 re-arranges the blocks once and runs the Hopper kernels; the reference path on the
    same module (dequantized: the order undone) and the state dict (checkpoint order) are unchanged."""
    moe = random_moe(2880, 2880, 32, 4, seed=11)
    g = torch.Generator(device=DEVICE).manual_seed(11)
    moe.router.weight.data = (0.05 * torch.randn(32, 2880, generator=g, device=DEVICE)).to(DTYPE)
    moe.router.bias.data = moe.router.bias.data.to(DTYPE)
    sd = {k: v.clone() for k, v in moe.state_dict().items()}
    x = torch.randn(200, 2880, generator=g, device=DEVICE).to(DTYPE)
    with torch.no_grad():
        moe.use_kernels = False
        ref = moe(x)
        assert moe.last_path == "reference" and moe.experts.blocks_order == "checkpoint"
        moe.use_kernels = True
        routed = {}
        moe.hook_expert_idx._fns.append(lambda t, hook: routed.__setitem__("idx", t))
        moe.hook_expert_weight._fns.append(lambda t, hook: routed.__setitem__("weight", t))
        try:
            fast = moe(x)
        finally:
            moe.hook_expert_idx._fns.clear()
            moe.hook_expert_weight._fns.clear()
        assert moe.last_path == "triton" and moe.experts.blocks_order == "hopper"
        assert moe.experts.one_multiply  # random_moe's scales, 117..122
        exact = moe_exact(moe, x, routed["idx"], routed["weight"])  # the experts the fast path chose
        check_no_worse(fast, ref, exact, "MoE module, Hopper kernels")
        # the block's residual add in the kernel that sums the experts: the same as adding after it, bit for bit,
        # also when a hook replaces the MoE's output (the add is then redone on the replacement)
        r = torch.randn(200, 2880, generator=g, device=DEVICE).to(DTYPE)
        assert torch.equal(moe(x, residual=r), r + fast)
        moe.hook_out._fns.append(lambda t, hook: 2 * t)
        try:
            assert torch.equal(moe(x, residual=r), r + 2 * fast)
        finally:
            moe.hook_out._fns.clear()
        moe.use_kernels = False  # (its index_add_ sums in a run-dependent order on CUDA: not bit for bit)
        again = moe(x)
        assert rel_err(again, ref) <= REL_FLOOR, f"the reference path changed by {rel_err(again, ref):.3g}"
    assert all(torch.equal(v, sd[k]) for k, v in moe.state_dict().items())


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
def test_moe_module_decodes_scales_above_128_with_two_multiplies():
    """One scale of 129 (weights up to 24) in a layer: the module notes it and its Hopper kernels decode with two
    multiplies, within the reference's error of exact maths; the one-multiply decode would have made those weights
    infinite (2^128 is no bf16 number), which is why it is checked."""
    moe = random_moe(2880, 2880, 32, 4, seed=12)
    moe.experts.down_proj_scales[:, 7, 3] = 129  # every expert: output feature 7, inputs 96..127
    x, idx, weight = routed_inputs(100, 2880, 32, 4)
    g = torch.Generator(device=DEVICE).manual_seed(12)
    moe.router.weight.data = (0.05 * torch.randn(32, 2880, generator=g, device=DEVICE)).to(DTYPE)
    moe.router.bias.data = moe.router.bias.data.to(DTYPE)
    xs = torch.randn(100, 2880, generator=g, device=DEVICE).to(DTYPE)
    routed = {}
    moe.hook_expert_idx._fns.append(lambda t, hook: routed.__setitem__("idx", t))
    moe.hook_expert_weight._fns.append(lambda t, hook: routed.__setitem__("weight", t))
    with torch.no_grad():
        try:
            fast = moe(xs)
        finally:
            moe.hook_expert_idx._fns.clear()
            moe.hook_expert_weight._fns.clear()
        assert moe.last_path == "triton" and not moe.experts.one_multiply
        exact = moe_exact(moe, xs, routed["idx"], routed["weight"])
        moe.use_kernels = False
        ref = moe(xs)
    assert torch.isfinite(fast).all() and exact[:, 7].abs().max() > 1  # the large weights count
    check_no_worse(fast, ref, exact, "MoE module, a scale of 129")
    plain = random_moe(2880, 2880, 32, 4, seed=12)  # the same weights, re-arranged by hopper_moe
    plain.experts.down_proj_scales[:, 7, 3] = 129
    wrong = hopper_moe(plain, x, idx, weight, one_multiply=True)
    assert not torch.isfinite(wrong[:, 7]).all()


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
@pytest.mark.parametrize("window", (None, 40, 16), ids=lambda w: f"window{w}")
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (64, 32)])
def test_attention_kernel_block_sizes(block_m, block_n, window):
    """Small blocks, so that a query block walks many key blocks: under full causal attention the whole ones
    unmasked, then the diagonal (block_m = 2 block_n: two of them); under a window, blocks cut by its edge."""
    from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused

    H, K, D = ATTN_SHAPE
    T = 300 if CUDA else 100
    g = torch.Generator(device=DEVICE).manual_seed(block_m + block_n + (window or 0))
    q, k, v = (torch.randn(T, n, D, generator=g, device=DEVICE).to(DTYPE) for n in (H, K, K))
    sinks = (2 + 2 * torch.randn(H, generator=g, device=DEVICE)).to(DTYPE)
    out, sink_prob = attention_with_sinks_fused(q, k, v, sinks, window, want_sink=True, block_m=block_m,
                                                block_n=block_n)
    pattern, sink_ref = attention_with_sinks(q, k, sinks, window)
    where = f"attention blocks {block_m}x{block_n} T={T} window={window}"
    check_no_worse(out, attend(pattern, v), attend(pattern, v.float()), where)
    assert (sink_prob - sink_ref).abs().max().item() <= SINK_ATOL, where


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


def _check_pattern_stats(T, window, seed, **blocks):
    """pattern_stats_fused against trace.pattern_reductions' reference path (the blocks of attention_with_sinks)."""
    from gptoss_viz.runtime.kernels.attention import pattern_stats_fused
    from gptoss_viz.trace import distance_edges, pattern_reductions

    H, K, D = ATTN_SHAPE
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = (3 * torch.randn(T, H, D, generator=g, device=DEVICE)).to(DTYPE)
    k = (3 * torch.randn(T, K, D, generator=g, device=DEVICE)).to(DTYPE)
    k[0] *= 4  # a strong first key, so the first-token mass is not tiny
    sinks = (1 + torch.randn(H, generator=g, device=DEVICE)).to(DTYPE)
    edges = distance_edges(T, 128)
    first, dist = pattern_stats_fused(q, k, sinks, window, edges, **blocks)
    first_ref, dist_ref = pattern_reductions(q, k, sinks, window, edges, use_kernel=False)
    where = f"pattern stats T={T} window={window} {blocks}"
    assert first.shape == first_ref.shape and dist.shape == dist_ref.shape, where
    assert (first - first_ref).abs().max().item() <= SINK_ATOL, f"{where}: first-token mass {first[:4]} vs {first_ref[:4]}"
    worst = (dist - dist_ref).abs().max().item()
    assert worst <= SINK_ATOL, f"{where}: distance mass differs by {worst:.3g}"
    assert (dist.sum(-1) - dist_ref.sum(-1)).abs().max().item() <= SINK_ATOL, where
    if window is not None:  # nothing beyond the window
        beyond = torch.as_tensor(edges[:-1], device=DEVICE) >= window
        if beyond.any():
            assert dist[:, beyond].abs().max().item() == 0.0, f"{where}: mass beyond the window"


@interpretable
@pytest.mark.parametrize("window", ATTN_WINDOWS, ids=lambda w: f"window{w}")
@pytest.mark.parametrize("T", ATTN_T)
def test_pattern_stats_kernel_matches_reference(T, window):
    """The Trace's first-token and distance-bucket masses from the kernel against the reference blocks of
    attention_with_sinks; both sum fp32 probabilities of logits from exact bf16 products (only the summation
    order and the kernel's rescaling by the running max differ), so they agree to SINK_ATOL like the sink
    probabilities."""
    _check_pattern_stats(T, window, T * 11 + (window or 0))


@interpretable
@pytest.mark.parametrize("window", (None, 40, 16), ids=lambda w: f"window{w}")
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (64, 32)])
def test_pattern_stats_kernel_block_sizes(block_m, block_n, window):
    """Small blocks, so that a query block walks many key blocks: whole ones (unmasked under full causal
    attention, many inside one distance bucket), the diagonal ones, and blocks cut by the window's edge."""
    _check_pattern_stats(300 if CUDA else 100, window, block_m * 3 + block_n + (window or 0), block_m=block_m,
                         block_n=block_n)


# ---------------------------------------------------------------------------------------------------------------
# Small fused kernels (kernels/fused.py)

@interpretable
@pytest.mark.parametrize("T", (1, 37, 300))
def test_rope_fused_equals_apply_rope_bit_for_bit(T):
    from gptoss_viz.runtime.kernels.fused import rope_fused
    from gptoss_viz.runtime.rope import apply_rope, rope_cos_sin, rope_inv_freq

    H, K, D = ATTN_SHAPE
    g = torch.Generator(device=DEVICE).manual_seed(T)
    cos, sin = rope_cos_sin(torch.arange(T, device=DEVICE), rope_inv_freq(D, 150000.0), 1.3466)
    views = {}
    for n in (H, K):
        qkv = torch.randn(T, n + 2, D, generator=g, device=DEVICE).to(DTYPE)
        x = views[n] = qkv[:, 1:n + 1]  # a strided view, as the projections' outputs can be
        assert torch.equal(rope_fused(x, cos, sin), apply_rope(x, cos, sin)), f"RoPE T={T} heads={n}"
    q_rot, k_rot = rope_fused(views[H], cos, sin, views[K])  # q and k (different head counts) in one launch
    assert torch.equal(q_rot, apply_rope(views[H], cos, sin)), f"RoPE pair T={T}: q"
    assert torch.equal(k_rot, apply_rope(views[K], cos, sin)), f"RoPE pair T={T}: k"


@interpretable
@pytest.mark.parametrize("residual", (False, True))
def test_rms_norm_fused_matches_reference(residual):
    """Same fp32 maths; only the order of the mean's sum differs, so at most one unit in the last bf16 place."""
    from gptoss_viz.runtime.gptoss import rms_norm
    from gptoss_viz.runtime.kernels.fused import rms_norm_fused

    d = 2880 if CUDA else 40
    g = torch.Generator(device=DEVICE).manual_seed(1)
    x, r = ((4 * torch.randn(333, d, generator=g, device=DEVICE)).to(DTYPE) for _ in range(2))
    w = (1 + torch.randn(d, generator=g, device=DEVICE)).to(DTYPE)
    if residual:
        out, s = rms_norm_fused(x, w, 1e-5, r)
        assert torch.equal(s, x + r), "the residual sum differs from x + r"
        ref = rms_norm(x + r, w, 1e-5)
    else:
        out, ref = rms_norm_fused(x, w, 1e-5), rms_norm(x, w, 1e-5)
    ulp = ref.float().abs() * 2.0 ** -7  # one unit in the last place of bf16 (8 significant bits), generously
    assert ((out.float() - ref.float()).abs() <= ulp + 1e-30).all(), "RMSNorm differs by more than one ulp"


@interpretable
@pytest.mark.parametrize("T", (1, 37, 1500))
@pytest.mark.parametrize("norm", (False, True))
def test_embed_fused_equals_embedding_and_rms_norm_fused(T, norm):
    """The fused embedding gives torch's embedding rows, with `norm` rms_norm_fused's RMSNorm of them bit for bit
    (same kernel block, warps and sums), and the ids' min and max; an id out of range reads row 0, not past the
    table, and shows in the range (the caller rejects it). ids [T] and [2, T], int64 and int32."""
    from gptoss_viz.runtime.kernels.fused import embed_fused, rms_norm_fused

    V, d = (2048, 2880) if CUDA else (300, 40)
    g = torch.Generator(device=DEVICE).manual_seed(T)
    table = torch.randn(V, d, generator=g, device=DEVICE).to(DTYPE)
    w = (1 + torch.randn(d, generator=g, device=DEVICE)).to(DTYPE)
    for shape, dtype in (((T,), torch.int64), ((2, T), torch.int32)):
        ids = torch.randint(0, V, shape, generator=g, device=DEVICE).to(dtype)
        x, normed, id_range = embed_fused(ids, table, (w, 1e-5) if norm else None)
        assert torch.equal(x, torch.nn.functional.embedding(ids.long(), table)), (shape, dtype)
        if norm:
            assert torch.equal(normed, rms_norm_fused(x, w, 1e-5)), f"RMSNorm differs {shape} {dtype}"
        else:
            assert normed is None
        assert id_range.tolist() == [ids.min().item(), ids.max().item()], (id_range.tolist(), shape)
    bad = torch.randint(0, V, (T,), generator=g, device=DEVICE)
    bad[T // 2] = V + 7
    x, _, id_range = embed_fused(bad, table)
    assert torch.equal(x[T // 2], table[0]), "an id past the table must read row 0"
    assert id_range.tolist()[1] == V + 7
    bad[T // 2] = -3
    assert embed_fused(bad, table)[2].tolist()[0] == -3


@pytest.mark.skipif(not CUDA, reason="the fast path runs on CUDA only")
def test_fused_embedding_rejects_bad_ids_before_any_hook_and_changes_no_logit(monkeypatch):
    """The fast path embeds in one launch and checks the ids' range without a wait at the forward's start. The
    logits equal those of torch's embedding, the id check on the host and the first norm of its own, bit for bit;
    an id out of range raises the same InputError as before, no hook function ever sees an activation of it, and
    the model runs on afterwards (no device-side assert)."""
    from gptoss_viz.errors import InputError
    from gptoss_viz.runtime import gptoss
    from gptoss_viz.runtime.kernels import fused

    cfg, model, ids = prepared_20b(2, seed=3, ids_seed=2)
    calls = count_calls(monkeypatch, fused, "embed_fused")
    with torch.inference_mode():
        fast = model(ids)
        assert len(calls) == 1, "the forward did not take the fused embedding"
        monkeypatch.setattr(gptoss, "_embed_fused_ok", lambda *a: False)
        plain = model(ids)
        monkeypatch.undo()
        assert torch.equal(fast, plain), "the fused embedding changed the logits"
        calls = count_calls(monkeypatch, fused, "embed_fused")
        for bad_id, shown in ((cfg.vocab_size, cfg.vocab_size), (-5, -5)):
            bad = ids.clone()
            bad[17] = bad_id
            with pytest.raises(InputError, match=f"token id {shown} is out of range"):
                model(bad)
            seen = []
            with pytest.raises(InputError, match=f"token id {shown} is out of range"):
                with model.hooks([(n, lambda x, hook: seen.append(hook.name))
                                  for n in ("hook_embed", "blocks.1.mlp.hook_expert_idx")]):
                    model(bad)
            assert not seen, f"hooks saw activations of rejected ids: {seen}"
            seen.clear()
            with pytest.raises(InputError):
                with model.hooks([("blocks.1.attn.hook_q", lambda x, hook: seen.append(hook.name))]):
                    model(bad)
            assert not seen, f"a later hook saw activations of rejected ids: {seen}"
        assert len(calls) == 6, "the bad ids did not go through the fused embedding"
        assert torch.equal(model(ids), fast), "the model gives other logits after rejecting bad ids"


@interpretable
@pytest.mark.parametrize("V", (50, 4096, 10000))
def test_top_predictions_fused_matches_topk_and_softmax(V):
    """The same top-k probabilities, to fp32 rounding, as topk over the fp32 softmax, and ids that hold them (bf16
    logits tie often; equal ones may come in either order, as with torch.topk); a row of -inf but one logit."""
    from gptoss_viz.runtime.kernels.fused import top_predictions_fused

    g = torch.Generator(device=DEVICE).manual_seed(V)
    logits = (4 * torch.randn(37, V, generator=g, device=DEVICE)).to(DTYPE)
    logits[3] = float("-inf")
    logits[3, V // 2] = 1.0
    p, ids = top_predictions_fused(logits, 5, chunk=4096 if CUDA else 256)
    ref = logits.float().softmax(-1)
    ref_p = ref.topk(5, dim=-1).values
    assert torch.allclose(p, ref_p, rtol=1e-5, atol=1e-7), "top-k probabilities differ"
    assert torch.allclose(ref.gather(-1, ids), ref_p, rtol=1e-5, atol=1e-7), "ids do not hold the top-k values"
    assert (ids[3, 0] == V // 2) and p[3, 0].item() == 1.0 and (p[3, 1:] == 0).all(), "the one finite logit"


@interpretable
@pytest.mark.parametrize("y_dtype", [torch.float32, DTYPE])
@pytest.mark.parametrize("N,k,d", [(1, 4, 2880), (37, 4, 100), (300, 2, 1030)])
def test_sum_slots_with_residual(N, k, d, y_dtype):
    """The MoE's last step with the block's residual add in the same launch: the output as without it, and the sum
    equal to the block's own `residual + out` bit for bit. The slots in fp32 or, as the MoE kernels write them,
    in the activation dtype: either way summed in fp32."""
    from gptoss_viz.runtime.kernels.moe import sum_slots

    g = torch.Generator(device=DEVICE).manual_seed(N)
    y = torch.randn(N * k, d, generator=g, device=DEVICE).to(y_dtype)
    r = (8 * torch.randn(N, d, generator=g, device=DEVICE)).to(DTYPE)
    alone = sum_slots(y, N, DTYPE)
    ref = y.view(N, k, d)[:, 0].float().clone()  # (a copy: .float() of fp32 y is y itself)
    for j in range(1, k):  # fp32, in slot order
        ref += y.view(N, k, d)[:, j].float()
    assert torch.equal(alone, ref.to(DTYPE)), "the slot sum differs from fp32 in slot order, rounded once"
    out, total = sum_slots(y, N, DTYPE, residual=r)
    assert torch.equal(out, alone), "the output changed with a residual"
    assert torch.equal(total, r + out), "residual + out differs from the bf16 add"
    with pytest.raises(ValueError, match="residual"):
        sum_slots(y, N, DTYPE, residual=r[:, :-1])


@interpretable
@pytest.mark.parametrize("N,k,d", [(1, 4, 2880), (37, 4, 2880), (300, 2, 1030), (5, 4, 64)])
def test_sum_slots_computes_the_next_norm_as_rms_norm_fused_does(N, k, d):
    """The MoE's last launch with the next RMSNorm (the following block's input norm, or the model's final one):
    out and residual + out as without it, and the norm equal bit for bit to rms_norm_fused of that sum, which is
    what the forward would otherwise launch."""
    from gptoss_viz.runtime.kernels.fused import rms_norm_fused
    from gptoss_viz.runtime.kernels.moe import sum_slots

    g = torch.Generator(device=DEVICE).manual_seed(N + d)
    y = torch.randn(N * k, d, generator=g, device=DEVICE)
    r = (8 * torch.randn(N, d, generator=g, device=DEVICE)).to(DTYPE)
    w = (1 + 0.1 * torch.randn(d, generator=g, device=DEVICE)).to(DTYPE)
    out, total = sum_slots(y, N, DTYPE, residual=r)
    out2, total2, normed = sum_slots(y, N, DTYPE, residual=r, norm=(w, 1e-5))
    assert torch.equal(out2, out) and torch.equal(total2, total), "the norm changed the sum or the output"
    assert torch.equal(normed, rms_norm_fused(total, w, 1e-5)), "the norm differs from rms_norm_fused's"
    with pytest.raises(ValueError, match="residual"):
        sum_slots(y, N, DTYPE, norm=(w, 1e-5))
    with pytest.raises(ValueError, match="norm weight"):
        sum_slots(y, N, DTYPE, residual=r, norm=(w[:-1], 1e-5))


@interpretable
@pytest.mark.parametrize("E,T", [(32, 1), (32, 1000), (128, 333), (8, 37)])
def test_route_fused_matches_route(E, T):
    """gptoss.route's experts and weights: the same k largest logits, largest first, every expert above the k-th
    value chosen, equal logits taken lower expert first (torch.topk leaves that order open), and the softmax over
    them within one unit in the last place (the kernel sums the k exponentials in its own order). Half the rows
    hold coarse logits, so ties at the k-th value are common."""
    from gptoss_viz.runtime.gptoss import route
    from gptoss_viz.runtime.kernels.fused import route_fused

    k = 4 if E > 8 else 2
    g = torch.Generator(device=DEVICE).manual_seed(E + T)
    logits = (3 * torch.randn(T, E, generator=g, device=DEVICE)).to(DTYPE)
    logits[: (T + 1) // 2] = (2 * logits[: (T + 1) // 2]).round() / 2
    idx, w = route_fused(logits, k)
    ref_idx, ref_w = route(logits, k)
    assert idx.dtype == ref_idx.dtype and w.dtype == ref_w.dtype and idx.shape == ref_idx.shape
    vals = logits.gather(-1, idx)
    assert torch.equal(vals, logits.gather(-1, ref_idx)), "not the same k largest logits, largest first"
    tied = vals[:, 1:] == vals[:, :-1]
    assert (idx[:, 1:] > idx[:, :-1])[tied].all(), "equal logits not taken lower expert first"
    unchosen = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, idx, False)
    kth = vals[:, -1:]
    assert not (unchosen & (logits > kth)).any(), "an expert above the k-th value was left out"
    last_tied = torch.where(vals == kth, idx, -1).max(-1, keepdim=True).values  # highest chosen expert at it
    cols = torch.arange(E, device=DEVICE)
    assert not (unchosen & (logits == kth) & (cols < last_tied)).any(), "a lower expert at the k-th value left out"
    assert tied.any(), "the test meant to exercise ties found none"
    ref = vals.float().softmax(-1)  # torch's softmax over the same values, in fp32
    ulp = ref.abs() * 2.0 ** -7 if DTYPE == torch.bfloat16 else ref.abs() * 2.0 ** -10
    assert ((w.float() - ref).abs() <= ulp + 1e-30).all(), "routing weights differ by more than one ulp"


@interpretable
@pytest.mark.parametrize("E,k,N,bm", [(32, 4, 1, 16), (32, 4, 1024, 128), (128, 4, 333, 32), (8, 2, 37, 16),
                                     (32, 4, 4096, 128), (128, 4, 2000, 64)])
def test_schedule_kernel_equals_torch_schedule(E, k, N, bm):
    from gptoss_viz.runtime.kernels.fused import moe_schedule_fused
    from gptoss_viz.runtime.kernels.schedule import moe_schedule

    g = torch.Generator(device=DEVICE).manual_seed(N)
    idx = torch.randn(N, E, generator=g, device=DEVICE).topk(k, -1).indices
    for skew in (False, True):
        if skew:
            idx[: N // 2] = idx[0]  # half the tokens on the same k experts: several tiles for one expert
        a, b = moe_schedule_fused(idx, E, bm), moe_schedule(idx, E, bm)
        assert a.n_tiles == b.n_tiles
        for name in ("tile_expert", "tile_start", "tile_end"):
            assert torch.equal(getattr(a, name).long(), getattr(b, name).long()), f"{name} differs ({E=} {N=} {skew=})"
        # order: a permutation that groups the assignments by expert like the reference's (whose stable sort
        # also orders each group ascending; the kernel's atomics need not), and each row's token
        order = a.order.long()
        assert torch.equal(order.sort().values, torch.arange(N * k, device=DEVICE)), "order is not a permutation"
        flat = idx.reshape(-1)
        assert torch.equal(flat[order], flat[b.order]), f"order does not group by expert ({E=} {N=} {skew=})"
        assert torch.equal(a.token.long(), order // k), f"token is not each grouped row's token ({E=} {N=} {skew=})"


@interpretable
@pytest.mark.parametrize("T,E,k,bm", [(1, 32, 4, 16), (37, 8, 2, 16), (300, 32, 4, 160), (333, 128, 4, 64),
                                      (1024, 32, 4, 160)])
def test_router_grouping_equals_torch_schedule(T, E, k, bm):
    """router_route_fused(..., block_m) groups the assignments in its launch (ranks by atomics, the tile arrays
    from the program that finishes last) and group_rows_fused gathers the rows: the same tiles as
    schedule.moe_schedule, an order that groups by expert like its, each row's token, x's rows in that order; and
    the counters are back at zero after each launch (so a second launch, and one with skewed routing, agree)."""
    from gptoss_viz.runtime.kernels import fused
    from gptoss_viz.runtime.kernels.schedule import moe_schedule

    d = 64
    g = torch.Generator(device=DEVICE).manual_seed(T + E)
    h = torch.randn(T, d, generator=g, device=DEVICE).to(DTYPE)
    rw = (torch.randn(E, d, generator=g, device=DEVICE) / d ** 0.5).to(DTYPE)
    rb = (0.1 * torch.randn(E, generator=g, device=DEVICE)).to(DTYPE)
    x = torch.randn(T, 96, generator=g, device=DEVICE).to(DTYPE)  # rows to gather (96: a partial column block)
    for skew in (False, False, True):
        if skew:
            h[: T // 2] = h[0]  # half the tokens on the same k experts: several tiles for one expert
        logits, idx, weight, grouping = fused.router_route_fused(h, rw, rb, k, block_m=bm)
        assert torch.equal(idx, fused.route_fused(logits, k)[0]), "grouping changed the routing"
        xs, a = fused.group_rows_fused(x, idx, grouping)
        b = moe_schedule(idx, E, bm)
        assert a.n_tiles == b.n_tiles == grouping.n_tiles
        for name in ("tile_expert", "tile_start", "tile_end"):
            assert torch.equal(getattr(a, name).long(), getattr(b, name).long()), f"{name} differs ({T=} {skew=})"
        order = a.order.long()
        assert torch.equal(order.sort().values, torch.arange(T * k, device=DEVICE)), "order is not a permutation"
        flat = idx.reshape(-1)
        assert torch.equal(flat[order], flat[b.order]), f"order does not group by expert ({T=} {skew=})"
        assert torch.equal(a.token.long(), order // k), "token is not each grouped row's token"
        assert torch.equal(xs, x[order // k]), "the gathered rows are not x's rows in grouped order"
        counters = fused._GROUP_COUNTERS
        assert all(not c.any() for c in counters.values()), "the counters were not set back to zero"
    with pytest.raises(ValueError, match="block_m"):
        fused.router_route_fused(h, rw, rb, k, block_m=0)
    with pytest.raises(ValueError, match="does not route"):
        fused.group_rows_fused(x[:-1], idx[:-1], grouping)


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
            attn.fuse_qkv()  # q, k, v in one matmul (what load_model's prepare_kernels does)
            assert attn._fused_qkv() is not None
            check_no_worse(attn(x, cos, sin), outs[False], exact, f"layer {i} attention, fused q/k/v")
            # MoE: the router is the same bf16 linear on both paths, so both see the same experts
            mlp = block.mlp
            weight, idx = mlp.router(x).topk(cfg.num_experts_per_tok, -1)
            weight = weight.softmax(-1)
            from gptoss_viz.runtime.kernels.moe import moe_mxfp4

            ex = mlp.experts
            fast = moe_mxfp4(x, idx, weight, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                             ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
            check_no_worse(fast, mlp.combine(x, idx, weight), moe_exact(mlp, x, idx, weight), f"layer {i} MoE")
            mlp.use_kernels = True  # the module's own choice (the Hopper kernels on an H100/H200)
            check_no_worse(mlp(x), mlp.combine(x, idx, weight), moe_exact(mlp, x, idx, weight),
                           f"layer {i} MoE module ({mlp.experts.blocks_order} order)")

    # The whole model: routing decisions can flip on bf16 ties between the paths, so compare loosely here
    names = ["blocks.0.attn.hook_sink_prob", "blocks.1.attn.hook_sink_prob"]
    model.use_kernels = True
    logits_f, fast = model.run_with_cache(ids, names)
    assert model.last_path == {"attention": "triton", "moe": "triton"}, model.last_path
    model.use_kernels = False
    logits_r, ref = model.run_with_cache(ids, names)
    assert model.last_path == {"attention": "reference", "moe": "reference"}, model.last_path
    # layer 0's sink probabilities: both bf16 paths against fp32 maths on the same weights (the fused RMSNorm and
    # RoPE round like the reference up to one ulp of the norm, which random 20b-shaped weights can amplify)
    exact_model = copy.deepcopy(model).float()
    exact_model.use_kernels = False
    _, exact = exact_model.run_with_cache(ids, names[:1])
    del exact_model
    e_fast = (fast[names[0]] - exact[names[0]]).abs().max().item()
    e_ref = (ref[names[0]] - exact[names[0]]).abs().max().item()
    assert e_fast <= max(1.25 * e_ref, SINK_ATOL), f"layer 0 sink probability off by {e_fast:.3g} (reference {e_ref:.3g})"
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


def prepared_20b(layers: int, seed: int, ids_seed: int):
    """(cfg, model, ids): a random 20b-shaped model of `layers` layers (2048-token vocabulary) on the GPU, its kernels
    prepared as load_model does, and 300 random prompt ids."""
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=layers, vocab_size=2048)
    model = random_packed_model(cfg, "cuda", seed=seed)
    model.prepare_kernels()
    g = torch.Generator("cuda").manual_seed(ids_seed)
    return cfg, model, torch.randint(0, cfg.vocab_size, (300,), device="cuda", generator=g)


def count_calls(monkeypatch, module, name: str) -> list:
    """module.name wrapped (for the test's duration) to append to the returned list at each call."""
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.skipif(not CUDA, reason="the fast path runs on CUDA only")
def test_norms_from_the_moe_launch_change_no_logit(monkeypatch):
    """The fast path takes each block's input RMSNorm (and the final one) from the previous block's last MoE
    launch, and the first block's from the embedding's launch. Listening at hook_resid_pre / hook_resid_post stops
    that; the logits stay the same bit for bit, and the forward launches that many RMSNorms more."""
    from gptoss_viz.runtime.kernels import fused

    cfg, model, ids = prepared_20b(3, seed=5, ids_seed=1)
    calls = count_calls(monkeypatch, fused, "rms_norm_fused")
    seen = []
    with torch.inference_mode():
        plain = model(ids)
        n_plain = len(calls)
        for names in (["blocks.1.hook_resid_pre"], ["blocks.2.hook_resid_post"],
                      [f"blocks.{i}.hook_resid_pre" for i in range(3)]):
            calls.clear()
            with model.hooks([(n, lambda x, hook: seen.append(hook.name)) for n in names]):
                got = model(ids)
            assert torch.equal(got, plain), f"logits differ with {names} listened to"
            assert len(calls) == n_plain + len(names), (names, len(calls))
    assert model.last_path == {"attention": "triton", "moe": "triton"}, model.last_path
    assert n_plain == cfg.num_hidden_layers, f"{n_plain} RMSNorm launches: one a block (post-attention)"
    assert seen, "the hooks never ran"


@interpretable
@pytest.mark.parametrize("T,E,k,d", [(1, 32, 4, 2880), (37, 32, 4, 2880), (300, 32, 4, 200), (65, 128, 4, 256),
                                     (20, 8, 2, 64)])
def test_router_route_fused_matches_router_and_route(T, E, k, d):
    """The router's linear and route in one launch: the logits within an ulp of the fp32 dot (only the order of
    the sum differs from F.linear's), and the experts and weights route_fused's choice from those logits, bit for
    bit. Leading dimensions pass through; bad arguments are refused."""
    from gptoss_viz.runtime.kernels.fused import route_fused, router_route_fused

    g = torch.Generator(device=DEVICE).manual_seed(T + E + d)
    h = torch.randn(T, d, generator=g, device=DEVICE).to(DTYPE)
    rw = (torch.randn(E, d, generator=g, device=DEVICE) / d ** 0.5).to(DTYPE)
    rb = (0.1 * torch.randn(E, generator=g, device=DEVICE)).to(DTYPE)
    logits, idx, weight = router_route_fused(h, rw, rb, k)
    exact = h.float() @ rw.float().T + rb.float()
    step = 2.0 ** -7 if DTYPE == torch.bfloat16 else 2.0 ** -10  # one ulp relative, at the top of a binade
    assert logits.dtype == DTYPE and logits.shape == (T, E)
    assert ((logits.float() - exact).abs() <= exact.abs() * step + 1e-6).all(), "logits off by more than one ulp"
    linear = torch.nn.functional.linear(h.float(), rw.float(), rb.float()).to(DTYPE)
    assert (logits == linear).float().mean() > 0.95, "the logits are not mostly F.linear's, rounded"
    want_idx, want_w = route_fused(logits, k)
    assert torch.equal(idx, want_idx) and torch.equal(weight, want_w), "the choice differs from route_fused's"
    got = router_route_fused(h.view(1, T, d), rw, rb, k)
    assert [tuple(t.shape) for t in got] == [(1, T, E), (1, T, k), (1, T, k)]
    assert torch.equal(got[0].view(T, E), logits) and torch.equal(got[1].view(T, k), idx)
    with pytest.raises(ValueError, match="k="):
        router_route_fused(h, rw, rb, E + 1)
    with pytest.raises(ValueError, match="do not fit"):
        router_route_fused(h[:, :-1], rw, rb, k)
    with pytest.raises(ValueError, match="do not fit"):
        router_route_fused(h, rw, rb.float(), k)


@pytest.mark.skipif(not CUDA, reason="the fast path runs on CUDA only")
def test_block_routes_in_one_launch_and_keeps_router_hooks(monkeypatch):
    """The fast path takes each block's router logits and choice from router_route_fused: one launch a block in
    place of three, the model's logits as with the cuBLAS router and route launches (within bf16: the router's
    dot sums in another order), and a hook on the router logits still decides the experts, whether it returns new
    logits or writes them in place."""
    from gptoss_viz.runtime import gptoss
    from gptoss_viz.runtime.hooks import observer
    from gptoss_viz.runtime.kernels import fused

    cfg, model, ids = prepared_20b(2, seed=6, ids_seed=2)
    calls = count_calls(monkeypatch, fused, "router_route_fused")
    routes = count_calls(monkeypatch, fused, "route_fused")
    with torch.inference_mode():
        fast = model(ids)
        assert len(calls) == cfg.num_hidden_layers, calls
        with monkeypatch.context() as m:
            m.setattr(gptoss.MoE, "routing_fused_ok", lambda self, x: False)
            apart = model(ids)
        assert len(calls) == cfg.num_hidden_layers, "router_route_fused ran with the fusion turned off"
        err = rel_err(fast, apart)
        top1 = (fast.argmax(-1) == apart.argmax(-1)).float().mean().item()
        assert err < 0.05 and top1 > 0.9, f"logits differ by {err:.3g} (relative), top-1 agrees {top1:.3f}"

        def favour_last(x, hook):  # a new tensor: the last k experts win every token
            return x + torch.where(torch.arange(cfg.num_local_experts, device="cuda") >= cfg.num_local_experts
                                   - cfg.num_experts_per_tok, 1e3, 0.0).to(x.dtype)

        def favour_first_in_place(x, hook):
            x[..., : cfg.num_experts_per_tok] += 1e3

        # an observer of the logits (the Trace's hooks) leaves the launch's choice in place: no route launch
        routes.clear()  # (the run with the fusion off routed every layer)
        got = {}
        watch = observer(lambda x, hook: got.setdefault("l", x))
        with model.hooks([("blocks.1.mlp.hook_router_logits", watch)]):
            assert torch.equal(model(ids), fast), "an observing hook changed the logits"
        assert "l" in got and not routes, f"{len(routes)} route launches with an observer"
        with model.hooks([("blocks.1.mlp.hook_router_logits", lambda x, hook: None)]):
            assert torch.equal(model(ids), fast), "a hook that changes nothing changed the logits"
        assert len(routes) == 1, "an unmarked hook's logits were not routed again"

        want_last = set(range(cfg.num_local_experts - cfg.num_experts_per_tok, cfg.num_local_experts))
        for fn, want in ((favour_last, want_last), (favour_first_in_place, set(range(cfg.num_experts_per_tok)))):
            seen = {}
            with model.hooks([("blocks.1.mlp.hook_router_logits", fn),
                              ("blocks.1.mlp.hook_expert_idx", lambda x, hook: seen.setdefault("idx", x.clone()))]):
                model(ids)
            assert set(seen["idx"].unique().tolist()) == want, (fn.__name__, seen["idx"].unique().tolist())


@pytest.mark.skipif(not CUDA, reason="the fast path runs on CUDA only")
def test_block_groups_the_moe_rows_in_the_router_launch(monkeypatch):
    """The fast path groups each block's assignments for the Hopper MoE kernels in the router's launch and gathers
    the rows in one more (group_rows_fused), never running moe_schedule_fused: the logits are those of the
    schedule launch bit for bit (each grouped row's dots are its own, whatever its place in its expert's group).
    A hook that replaces the experts' ids (not an observer) has its ids grouped anew, and decides the experts."""
    from gptoss_viz.runtime import gptoss
    from gptoss_viz.runtime.kernels import moe_hopper

    cfg, model, ids = prepared_20b(2, seed=7, ids_seed=3)
    if model.blocks[0].mlp.grouping_rows(torch.zeros(1, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)) \
            is None:
        pytest.skip("the Hopper MoE kernels do not run here")
    grouped = count_calls(monkeypatch, moe_hopper, "group_rows_fused")
    scheduled = count_calls(monkeypatch, moe_hopper, "moe_schedule_fused")
    with torch.inference_mode():
        fast = model(ids)
        assert len(grouped) == cfg.num_hidden_layers and not scheduled, (len(grouped), len(scheduled))
        with monkeypatch.context() as m:
            m.setattr(gptoss.MoE, "grouping_rows", lambda self, x: None)
            apart = model(ids)
        assert len(scheduled) == cfg.num_hidden_layers, "the schedule launch did not run with the grouping off"
        assert torch.equal(fast, apart), f"logits differ from the schedule launch's: {rel_err(fast, apart):.3g}"
        grouped.clear(), scheduled.clear()
        last = torch.arange(cfg.num_local_experts - cfg.num_experts_per_tok, cfg.num_local_experts, device="cuda")
        seen = {}
        with model.hooks([("blocks.1.mlp.hook_expert_idx", lambda x, hook: last.expand_as(x).clone()),
                          ("blocks.1.mlp.hook_out", lambda x, hook: seen.setdefault("out", x.clone()))]):
            model(ids)
        assert len(grouped) == 1 and len(scheduled) == 1, (len(grouped), len(scheduled))
        mlp = model.blocks[1].mlp
        with model.hooks([("blocks.1.mlp.hook_expert_idx", lambda x, hook: last.expand_as(x).clone()),
                          ("blocks.1.mlp.hook_out", lambda x, hook: seen.setdefault("ref", x.clone()))]):
            mlp.use_kernels = False  # the reference path's experts on the same ids
            try:
                model(ids)
            finally:
                mlp.use_kernels = True
        err = rel_err(seen["out"], seen["ref"])
        assert err < 0.02, f"the hooked ids' MoE output differs from the reference's by {err:.3g}"


# ---------------------------------------------------------------------------------------------------------------
# The whole Trace on the GPU


class _IdsTokenizer:
    """Tokenizer stand-in: run_trace sees exactly these ids (random weights: the text is moot)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def encode_with_offsets(self, text: str):
        from gptoss_viz.runtime.tokenizer import Encoded

        return Encoded(text, list(self.ids), [(0, 0)] * len(self.ids), ["."] * len(self.ids))

    def decode(self, ids) -> str:
        return "."


@pytest.mark.skipif(not CUDA, reason="the Trace's GPU path")
def test_trace_fast_path_matches_reference():
    """run_trace on the GPU in bf16 with every fast path (fused q/k/v, RoPE, attention and MoE kernels; pattern
    statistics from q/k; GPU reductions; pinned copies to the host) against the same model's reference path in
    bf16, each against an fp32 run: every field the app shows is no further from fp32 than the reference path's,
    and the chosen experts and top predictions agree with fp32 about as often (the 600 expert choices within 2%,
    the 150 top-1 predictions within 4%: a few flips either way at bf16's ties). 150 tokens cross the
    kernels' 64- and 128-token blocks; layers alternate a window of 8 and full attention."""
    from conftest import tiny_gptoss_config

    from gptoss_viz.runtime.random_checkpoint import random_packed_model
    from gptoss_viz.trace import run_trace

    cfg = tiny_gptoss_config(hidden_size=128, intermediate_size=64, head_dim=64, max_position_embeddings=4096)
    model = random_packed_model(cfg, DEVICE, seed=3).to(torch.bfloat16)
    exact = copy.deepcopy(model).float()
    exact.use_kernels = False
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, cfg.vocab_size, (150,), generator=g).tolist()
    for m in (model, exact):
        m.tokenizer = _IdsTokenizer(ids)
    model.prepare_kernels()
    model.use_kernels = True
    fast = run_trace(model, "x")
    assert fast.path == "triton", f"the fast trace took {fast.path}"
    model.use_kernels = False
    ref = run_trace(model, "x")
    assert ref.path == "reference"
    want = run_trace(exact, "x")
    for name in ("resid_norm", "first_token_mass", "distance_mass", "sink_prob", "router_logits", "expert_weight",
                 "top_probs"):
        f, r, e = (torch.from_numpy(getattr(t, name)).float() for t in (fast, ref, want))
        check_no_worse(f, r, e, f"Trace.{name}")
    for name, same, slack in (("expert_idx", lambda a, b: (a.sort(-1)[0] == b.sort(-1)[0]).all(-1), 0.02),
                              ("top_ids", lambda a, b: a[..., 0] == b[..., 0], 0.04)):
        f, r, e = (torch.from_numpy(getattr(t, name).astype("int64")) for t in (fast, ref, want))
        agree_fast, agree_ref = same(f, e).float().mean().item(), same(r, e).float().mean().item()
        assert agree_fast >= agree_ref - slack, f"Trace.{name}: fast agrees with fp32 {agree_fast:.3f}, " \
                                                f"the reference path {agree_ref:.3f}"
    assert torch.equal(torch.from_numpy(fast.sinks), torch.from_numpy(ref.sinks))
