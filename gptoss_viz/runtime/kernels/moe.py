"""Mixture of experts with MXFP4 expert weights, dequantized inside Triton matmuls (never expanded in memory).

(On sm_90 with bf16 activations the model runs moe_hopper.py's Gluon kernels instead, 17-52% less kernel time on
an H200, results/moe_hopper_h200.json; these run everywhere else, and their tables and tests stay the reference
for the Hopper ones.)

Computes exactly what gptoss.MoE.combine computes (SPEC.md, "Expert"): for each token t and each of its k chosen
experts e, y_e = W2_e swiglu_clamped(W1_e x_t + b1_e) + b2_e, and out_t = sum_j weight[t, j] y_{idx[t, j]}.

How: the (token, slot) assignments are grouped by expert (fused.moe_schedule_fused, the same groups and tiles as
schedule.moe_schedule in one launch); each program of a kernel takes NSUB sub-tiles of BM consecutive rows of one
expert (a Tile) and BN output columns, and walks the input dimension BK values at a time, decoding that slice of
the expert's packed weights (uint8 blocks + E8M0 scales, the checkpoint's own layout) to the activation dtype in
registers once for all its sub-tiles before the tensor-core dots. Accumulation is fp32.
  1. gate_up: rows are gathered from x by token; + bias, then the clamped SwiGLU on the interleaved gate/up
     columns (2j = gate_j, 2j+1 = up_j) before anything is written: out [A, I].
  2. down: + bias, times the routing weight (fp32), rounded to the activation dtype in the assignment's own row
     (t * k + j), so the k contributions of a token are summed afterwards in a fixed order (deterministic, no
     atomics), by
  3. _sum_slots_kernel, which sums them in fp32 and rounds the sum once to the activation dtype.

MXFP4 decoding (OCP Microscaling spec v1.0; mxfp4.py is the reference), three variants, each tested bit for bit
against mxfp4_dequant over every byte and scale of its range (tests/test_kernels_gpu.py):
  0 (fp16/fp32 activations, GPUs before Hopper): a nibble s|e1 e0|m is placed at bits 15 and 11..9 of an fp16
    word, which makes the fp16 number exactly fp4 * 2^-14 for all 16 codes (e = 0 lands on the fp16 subnormal
    0.5 * 2^-14 or zero, which the fp16 -> fp32 conversion keeps exactly). One fp32 multiply by
    2^(scale - 127 + 14) then gives the value, exactly (a power of two), for scales 1..240.
  (1, bf16 bit patterns from integer operations only, was never faster in the sweep and was removed.)
  2 (bf16 on sm_90): PTX on two bf16 values per 32-bit register (_decode_asm), ~3 instructions a value
    instead of 10-12 (~4 before its nibbles were placed by one integer multiply, twelfth session); 4-23% faster
    per MoE layer (benchmarks/moe_variants.py, with the earlier PTX). Equal to mxfp4_dequant in fp32 for scales
    1..254 (from 253 on the largest codes overflow to inf in both); scale 0 (2^-127) would decode to 0 instead of
    at most 6 * 2^-127.
  3: variant 2 with one multiply, half an instruction a value fewer, exact for scales 0..128 (weights below
    12 in magnitude: any trained checkpoint). On one 20b layer it was 23% faster to 20% slower than variant 2
    depending on the tile, on a machine whose timings drifted by up to 2x within the run (benchmarks/RESULTS.md),
    and again -16% to +6% in a later sweep (results/moe_variants_occupancy.json), so it is not the default here; it
    stays in the sweep and the tests. (moe_hopper.py's kernels do take it where a layer's scales allow.)
Trained checkpoints sit near scale 127, and 255 (NaN) is rejected at load.

Letters: N tokens, d hidden, I expert width, E experts, k experts per token, A = N * k assignments.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gptoss_viz.runtime.kernels.launch import Launcher, cdiv
from gptoss_viz.runtime.kernels.fused import _rms_norm_row, _round_to, moe_schedule_fused, rms_block


def _decode_asm(one_multiply: bool, shared_scale: bool = False) -> str:
    """PTX for _decode_bf16x2: four bytes (one register, $4) and their four scales ($5) -> four registers of two
    bf16 each ($0, $1: the low nibbles of bytes 0-1 and 2-3; $2, $3: the high nibbles).
    shared_scale (moe_hopper.py's form): the four bytes share one scale ($9), the byte register is $8, and each
    result register is split into two 16-bit outputs ($0-$7, the same values in the same order).

    prmt spreads bytes b0, b1 into the two 16-bit halves of a word t. One nibble s|e1 e0|m of each half is kept
    (and 0x000F000F, or 0x00F000F0 for the high ones) and one integer multiply makes two copies of it, shifted by 6
    and by 12 (by 2 and 8 for the high nibbles), which do not overlap, so no carry crosses between them: the
    first puts e1 e0 m at bits 8..6, the second the sign at bit 15. One mask (0x81C081C0) keeps just those bits.
    That is the bf16 number fp4 * 2^-126 for all 16 codes (e = 0 is a bf16 subnormal, which PTX's bf16 multiply
    keeps): 3 integer instructions a register of two values. Then either two bf16x2 multiplies, by 2^126 and by
    2^(scale - 127) (bf16 bits scale << 7; exact for scales 1..252, inf for the largest codes from 253 on, as in
    fp32), or one by 2^(scale - 1) (bf16 bits (scale + 126) << 7, a bf16 number only for scales 0..128). With a
    shared scale, one multiply-add spreads it into both halves and shifts it: scale * 0x00800080 (+ 126 << 7)."""
    byte, scale = ("$8", "$9") if shared_scale else ("$4", "$5")
    if shared_scale:
        scales = {"sc": None}
        per_out = ("sc",) * 4
    else:
        scales = {"s01": "0x4140", "s23": "0x4342"}  # the scales of bytes 0-1, 2-3
        per_out = ("s01", "s23", "s01", "s23")
    lines = [f".reg .b32 t01, t23, {', '.join(scales)}, u, two126;", "mov.b32 two126, 0x7E807E80;",
             f"prmt.b32 t01, {byte}, 0, 0x4140;", f"prmt.b32 t23, {byte}, 0, 0x4342;"]
    if shared_scale:
        lines.append(f"mad.lo.u32 sc, {scale}, 0x00800080, {'0x3F003F00' if one_multiply else '0'};")
    else:
        for sc, sel in scales.items():
            lines.append(f"prmt.b32 {sc}, {scale}, 0, {sel};")
            if one_multiply:
                lines.append(f"add.u32 {sc}, {sc}, 0x007E007E;")
            lines.append(f"shl.b32 {sc}, {sc}, 7;")
    nibbles = (("t01", "0x000F000F", "0x1040"), ("t23", "0x000F000F", "0x1040"),
               ("t01", "0x00F000F0", "0x104"), ("t23", "0x00F000F0", "0x104"))
    for out, ((t, keep, copies), sc) in enumerate(zip(nibbles, per_out)):
        lines += [f"and.b32 u, {t}, {keep};", f"mul.lo.u32 u, u, {copies};", "and.b32 u, u, 0x81C081C0;"]
        if not one_multiply:
            lines.append("mul.rn.bf16x2 u, u, two126;")
        if shared_scale:
            lines += [f"mul.rn.bf16x2 u, u, {sc};", f"mov.b32 {{${2 * out}, ${2 * out + 1}}}, u;"]
        else:
            lines.append(f"mul.rn.bf16x2 ${out}, u, {sc};")
    return "{\n" + "\n".join(lines) + "\n}"


_DECODE_ASM_TWO_MULTIPLIES = tl.constexpr(_decode_asm(one_multiply=False))
_DECODE_ASM_ONE_MULTIPLY = tl.constexpr(_decode_asm(one_multiply=True))


@triton.jit
def _decode_bf16x2(byte, scale, ONE_MULTIPLY: tl.constexpr):
    """uint8 bytes and their E8M0 scales (same shape) -> (low-nibble values, high-nibble values) in bf16, four
    bytes per instance, two values per 32-bit register (_decode_asm): ~4 instructions a value (3.5 with
    ONE_MULTIPLY) against 10-12 for DECODE 0."""
    return tl.inline_asm_elementwise(
        asm=_DECODE_ASM_ONE_MULTIPLY if ONE_MULTIPLY else _DECODE_ASM_TWO_MULTIPLIES,
        constraints="=r,=r,=r,=r,r,r", args=[byte, scale], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True,
        pack=4)


@triton.jit
def _load_scales(scl_ptr, rn, mask_n, k0, stride_sn, BN: tl.constexpr, BK: tl.constexpr):
    """E8M0 exponents of weight rows rn for input columns k0 .. k0+BK: [BN, BK/32] int32 (127 where masked)."""
    rs = tl.arange(0, BK // 32)
    return tl.load(scl_ptr + rn[:, None] * stride_sn + (k0 // 32 + rs)[None, :],
                   mask=mask_n[:, None], other=127).to(tl.int32)


@triton.jit
def _decode_tile(blk_ptr, s, rn, mask_n, k0, stride_bn,
                 BN: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr, DECODE: tl.constexpr):
    """Weight rows rn, input columns k0 .. k0+BK of one expert, with their scales s (_load_scales), decoded:
    [BN, BK] in DTYPE.

    DECODE 0: through fp16 and fp32 (exact for scales 1..240). DECODE 2: PTX on pairs of bf16 values (DTYPE
    must be bf16; sm_90), see _decode_asm; DECODE 3: the same with one multiply (scales 0..128)."""
    rb = tl.arange(0, BK // 2)
    byte = tl.load(blk_ptr + rn[:, None] * stride_bn + (k0 // 2 + rb)[None, :],
                   mask=mask_n[:, None], other=0).to(tl.int32)  # [BN, BK/2]: element 2b low nibble, 2b+1 high
    if DECODE >= 2:
        s8 = tl.broadcast_to(s.to(tl.uint8).reshape(BN, BK // 32, 1), (BN, BK // 32, 16)).reshape(BN, BK // 2)
        lo, hi = _decode_bf16x2(byte.to(tl.uint8), s8, DECODE == 3)
        return tl.join(lo, hi).reshape(BN, BK)
    lo = byte & 15
    hi = byte >> 4
    scale = ((s + 14) << 23).to(tl.float32, bitcast=True)  # 2^(s - 127) * 2^14
    lo = (((lo & 7) << 9) | ((lo & 8) << 12)).to(tl.int16).to(tl.float16, bitcast=True)  # fp4 * 2^-14, exact
    hi = (((hi & 7) << 9) | ((hi & 8) << 12)).to(tl.int16).to(tl.float16, bitcast=True)
    lo = (lo.to(tl.float32).reshape(BN, BK // 32, 16) * scale[:, :, None]).reshape(BN, BK // 2).to(DTYPE)
    hi = (hi.to(tl.float32).reshape(BN, BK // 32, 16) * scale[:, :, None]).reshape(BN, BK // 2).to(DTYPE)
    return tl.join(lo, hi).reshape(BN, BK)  # interleave: column 2b from lo, 2b+1 from hi


@triton.jit
def _dequant_tile(blk_ptr, scl_ptr, rn, mask_n, k0, stride_bn, stride_sn,
                  BN: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr, DECODE: tl.constexpr):
    """_decode_tile with its own scale load: [BN, BK] in DTYPE."""
    s = _load_scales(scl_ptr, rn, mask_n, k0, stride_sn, BN, BK)
    return _decode_tile(blk_ptr, s, rn, mask_n, k0, stride_bn, BN, BK, DTYPE, DECODE)


@triton.jit
def _k_loop(a_ptr, r0, r1, r2, m0, m1, m2, stride_am, blk, scl, rn, mask_n, K, stride_bn, stride_sn,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NS: tl.constexpr, DECODE: tl.constexpr):
    """The K loop of _rows_times_expert (not SWAP) for NS sub-tiles: one decoded weight slice a step, NS dots."""
    rk = tl.arange(0, BK)
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    s_next = _load_scales(scl, rn, mask_n, 0, stride_sn, BN, BK)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + r0[:, None] * stride_am + (k0 + rk)[None, :], mask=m0[:, None], other=0.0)
        # this step's scales were loaded a step ahead: too narrow (2-4 bytes a row) for the asynchronous copies
        # that bring the bytes and activations, a load in the step itself would wait on memory (5-10% per kernel)
        s = s_next
        s_next = _load_scales(scl, rn, mask_n & (rn * 0 + k0 + BK < K), k0 + BK, stride_sn, BN, BK)
        wt = tl.trans(_decode_tile(blk, s, rn, mask_n, k0, stride_bn, BN, BK, a.dtype, DECODE))
        acc0 = tl.dot(a, wt, acc0)  # [BM, BN]
        if NS >= 2:
            a = tl.load(a_ptr + r1[:, None] * stride_am + (k0 + rk)[None, :], mask=m1[:, None], other=0.0)
            acc1 = tl.dot(a, wt, acc1)
        if NS >= 3:
            a = tl.load(a_ptr + r2[:, None] * stride_am + (k0 + rk)[None, :], mask=m2[:, None], other=0.0)
            acc2 = tl.dot(a, wt, acc2)
    return acc0, acc1, acc2


@triton.jit
def _rows_times_expert(a_ptr, r0, r1, r2, m0, m1, m2, n_sub, stride_am, blk, scl, rn, mask_n, K, stride_bn,
                       stride_sn, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NSUB: tl.constexpr,
                       SWAP: tl.constexpr, DECODE: tl.constexpr):
    """Rows r0 (and r1, r2: NSUB sub-tiles of BM rows, masks m0..m2, n_sub of them non-empty) of a [*, K] times
    the expert's decoded weight rows rn, transposed: three accumulators [BM, BN] fp32 (unused ones zero).

    The sub-tiles share each decoded weight slice: a tile of NSUB * BM rows decodes the expert's weights once,
    where NSUB tiles of BM rows would decode them NSUB times. The K loop is compiled once per number of non-empty
    sub-tiles and chosen per program, so a short expert pays no tensor-core work for empty sub-tiles (a branch
    around the dot inside the loop would stop the compiler from pipelining the loads).
    SWAP (NSUB 1 only) computes it as (W a^T)^T: the decoded weights are then the register operand of the dot
    and the tokens its narrow side, which suits short tiles."""
    if SWAP:
        tl.static_assert(NSUB == 1, "SWAP tiles have one sub-tile")
        rk = tl.arange(0, BK)
        acct = tl.zeros((BN, BM), dtype=tl.float32)
        for k0 in range(0, K, BK):
            at = tl.load(a_ptr + r0[None, :] * stride_am + (k0 + rk)[:, None], mask=m0[None, :], other=0.0)
            w = _dequant_tile(blk, scl, rn, mask_n, k0, stride_bn, stride_sn, BN, BK, at.dtype, DECODE)
            acct = tl.dot(w, at, acct)  # [BN, BM]
        acc0 = tl.trans(acct)
        acc1 = tl.zeros((BM, BN), dtype=tl.float32)
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    elif NSUB == 1 or n_sub == 1:
        acc0, acc1, acc2 = _k_loop(a_ptr, r0, r1, r2, m0, m1, m2, stride_am, blk, scl, rn, mask_n, K, stride_bn,
                                   stride_sn, BM, BN, BK, 1, DECODE)
    elif NSUB == 2 or n_sub == 2:
        acc0, acc1, acc2 = _k_loop(a_ptr, r0, r1, r2, m0, m1, m2, stride_am, blk, scl, rn, mask_n, K, stride_bn,
                                   stride_sn, BM, BN, BK, 2, DECODE)
    else:
        acc0, acc1, acc2 = _k_loop(a_ptr, r0, r1, r2, m0, m1, m2, stride_am, blk, scl, rn, mask_n, K, stride_bn,
                                   stride_sn, BM, BN, BK, 3, DECODE)
    return acc0, acc1, acc2


@triton.jit
def _swiglu_store(acc, rm, mask_m, bias, rn, mask_n, out_ptr, stride_om, N, pid_n, limit, alpha,
                  BM: tl.constexpr, BN: tl.constexpr):
    """+ bias, the clamped SwiGLU on the interleaved gate/up columns, stored to rows rm of out [A, N/2]."""
    h = acc + bias[None, :]
    gate, up = tl.split(h.reshape(BM, BN // 2, 2))  # [BM, BN/2] each
    gate = tl.minimum(gate, limit)  # clamped above only
    up = tl.minimum(tl.maximum(up, -limit), limit)
    a = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    ri = pid_n * (BN // 2) + tl.arange(0, BN // 2)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + ri[None, :], a.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & (ri < N // 2)[None, :])


@triton.jit
def _gate_up_swiglu_kernel(x_ptr, order_ptr, blk_ptr, scl_ptr, bias_ptr, out_ptr,
                           tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                           K, N, stride_xm, stride_be, stride_bn, stride_se, stride_sn, stride_biase, stride_om,
                           limit, alpha,
                           TOP_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           NSUB: tl.constexpr, SWAP: tl.constexpr, DECODE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(tile_start_ptr + pid_m)
    end = tl.load(tile_end_ptr + pid_m)
    if start >= end:  # a spare tile of the static grid
        return
    e = tl.load(tile_expert_ptr + pid_m).to(tl.int64)
    n_sub = tl.cdiv(end - start, BM)  # non-empty sub-tiles (>= NSUB when the expert's rows go on)
    rm0 = start + tl.arange(0, BM)  # grouped rows of each sub-tile
    rm1 = rm0 + BM
    rm2 = rm1 + BM
    m0 = rm0 < end
    m1 = rm1 < end  # (used only when NSUB >= 2)
    m2 = rm2 < end
    tok0 = (tl.load(order_ptr + rm0, mask=m0, other=0) // TOP_K).to(tl.int64)  # token of each row
    tok1 = (tl.load(order_ptr + rm1, mask=m1, other=0) // TOP_K).to(tl.int64)
    tok2 = (tl.load(order_ptr + rm2, mask=m2, other=0) // TOP_K).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)  # gate_up output rows (interleaved gate/up)
    mask_n = rn < N
    acc0, acc1, acc2 = _rows_times_expert(x_ptr, tok0, tok1, tok2, m0, m1, m2, n_sub, stride_xm,
                                          blk_ptr + e * stride_be, scl_ptr + e * stride_se, rn, mask_n, K,
                                          stride_bn, stride_sn, BM, BN, BK, NSUB, SWAP, DECODE)
    bias = tl.load(bias_ptr + e * stride_biase + rn, mask=mask_n, other=0.0).to(tl.float32)
    _swiglu_store(acc0, rm0, m0, bias, rn, mask_n, out_ptr, stride_om, N, pid_n, limit, alpha, BM, BN)
    if NSUB >= 2:
        _swiglu_store(acc1, rm1, m1, bias, rn, mask_n, out_ptr, stride_om, N, pid_n, limit, alpha, BM, BN)
    if NSUB >= 3:
        _swiglu_store(acc2, rm2, m2, bias, rn, mask_n, out_ptr, stride_om, N, pid_n, limit, alpha, BM, BN)


_gate_up_swiglu_launch = Launcher(_gate_up_swiglu_kernel)


@triton.jit
def _weighted_store(acc, rm, mask_m, bias, order_ptr, route_w_ptr, rn, mask_n, y_ptr, stride_ym):
    """+ bias, times each row's routing weight (in fp32), stored in y's dtype to the row's assignment t * k + j."""
    dest = tl.load(order_ptr + rm, mask=mask_m, other=0).to(tl.int64)  # assignment id t * k + j of each row
    y = (acc + bias[None, :]) * tl.load(route_w_ptr + dest, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + dest[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _down_kernel(a_ptr, order_ptr, route_w_ptr, blk_ptr, scl_ptr, bias_ptr, y_ptr,
                 tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                 K, N, stride_am, stride_be, stride_bn, stride_se, stride_sn, stride_biase, stride_ym,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NSUB: tl.constexpr, SWAP: tl.constexpr,
                 DECODE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(tile_start_ptr + pid_m)
    end = tl.load(tile_end_ptr + pid_m)
    if start >= end:
        return
    e = tl.load(tile_expert_ptr + pid_m).to(tl.int64)
    n_sub = tl.cdiv(end - start, BM)
    rm0 = start + tl.arange(0, BM)
    rm1 = rm0 + BM
    rm2 = rm1 + BM
    m0 = rm0 < end
    m1 = rm1 < end  # (used only when NSUB >= 2)
    m2 = rm2 < end
    rn = pid_n * BN + tl.arange(0, BN)
    mask_n = rn < N
    acc0, acc1, acc2 = _rows_times_expert(a_ptr, rm0.to(tl.int64), rm1.to(tl.int64), rm2.to(tl.int64), m0, m1, m2,
                                          n_sub, stride_am, blk_ptr + e * stride_be, scl_ptr + e * stride_se, rn,
                                          mask_n, K, stride_bn, stride_sn, BM, BN, BK, NSUB, SWAP, DECODE)
    bias = tl.load(bias_ptr + e * stride_biase + rn, mask=mask_n, other=0.0).to(tl.float32)
    _weighted_store(acc0, rm0, m0, bias, order_ptr, route_w_ptr, rn, mask_n, y_ptr, stride_ym)
    if NSUB >= 2:
        _weighted_store(acc1, rm1, m1, bias, order_ptr, route_w_ptr, rn, mask_n, y_ptr, stride_ym)
    if NSUB >= 3:
        _weighted_store(acc2, rm2, m2, bias, order_ptr, route_w_ptr, rn, mask_n, y_ptr, stride_ym)


_down_launch = Launcher(_down_kernel)


@triton.jit
def _sum_slots_kernel(y_ptr, out_ptr, res_ptr, sum_ptr, w_ptr, norm_ptr, d, eps, TOP_K: tl.constexpr,
                      BD: tl.constexpr, HAS_RES: tl.constexpr, NORM: tl.constexpr):
    """out[t] = y[t * k] + y[t * k + 1] + ... (fp32, in slot order), in out's dtype: one token per program row.
    With a residual, also sum[t] = res[t] + out[t], rounded to out's dtype as the block's own bf16 add rounds it.
    With NORM as well (one program a token: BD >= d), norm[t] = the RMSNorm of sum[t] with weight w, computed as
    fused._rms_norm_kernel computes it (the same block and warps, so the squares add in the same order)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    m = cols < d
    acc = tl.load(y_ptr + t * TOP_K * d + cols, mask=m, other=0.0).to(tl.float32)
    for j in tl.static_range(1, TOP_K):
        acc += tl.load(y_ptr + (t * TOP_K + j) * d + cols, mask=m, other=0.0).to(tl.float32)
    DT = out_ptr.dtype.element_ty
    tl.store(out_ptr + t * d + cols, acc.to(DT), mask=m)
    if HAS_RES:
        r = tl.load(res_ptr + t * d + cols, mask=m, other=0.0).to(tl.float32)
        total = (r + _round_to(acc, DT)).to(DT)
        tl.store(sum_ptr + t * d + cols, total, mask=m)
        if NORM:
            yn = _rms_norm_row(total.to(tl.float32), w_ptr, cols, m, d, eps)  # (0 past d)
            tl.store(norm_ptr + t * d + cols, yn.to(DT), mask=m)


_sum_slots_launch = Launcher(_sum_slots_kernel)


def sum_slots(y: torch.Tensor, N: int, dtype: torch.dtype, residual: torch.Tensor | None = None,
              norm: tuple[torch.Tensor, float] | None = None):
    """Step 3 of both MoE paths: y [N * k, d] (the activation dtype, or fp32) -> out [N, d] in `dtype` (summed in
    fp32), or with `residual` [N, d] (out, residual + out) from the same launch (the block's residual add, one
    kernel fewer). With `norm` (weight [d], eps) as well: (out, total, rms_norm(total, weight, eps)), the next
    block's input RMSNorm from the same launch, equal bit for bit to fused.rms_norm_fused(total, weight, eps)."""
    A, d = y.shape
    out = torch.empty(N, d, device=y.device, dtype=dtype)
    res = total = normed = out
    if residual is not None:
        if residual.shape != out.shape or residual.dtype != dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not match the MoE output "
                             f"{tuple(out.shape)} {dtype}")
        res = residual if residual.is_contiguous() else residual.contiguous()
        total = torch.empty_like(out)
    w, eps = out, 0.0
    if norm is not None:
        if residual is None:
            raise ValueError("sum_slots: `norm` needs `residual` (it normalises residual + out)")
        w, eps = norm
        if w.shape != (d,) or not w.is_contiguous():
            raise ValueError(f"norm weight {tuple(w.shape)} does not match the MoE output's {d} features")
        normed = torch.empty_like(out)
        bd = rms_block(d)
        _sum_slots_launch[(N, 1)](y, out, res, total, w, normed, d, float(eps), TOP_K=A // N, BD=bd,
                                  HAS_RES=True, NORM=True, num_warps=8)
        return out, total, normed
    _sum_slots_launch[(N, cdiv(d, 1024))](y, out, res, total, w, normed, d, float(eps), TOP_K=A // N, BD=1024,
                                          HAS_RES=residual is not None, NORM=False, num_warps=4)
    return out if residual is None else (out, total)


def _tile_class(rows_per_expert: float) -> int:
    """The tables' key from the mean rows per expert: the smallest of 16, 32, 64, 128 rows >= 1.25 x the mean, else
    256. Every tile decodes its expert's whole weight slice again, so a tile should hold all of a typical expert's
    rows: rows per expert scatter around the mean (random routing of 1024 tokens to 32 experts gives 128 +- 11), and
    a tile sized at the mean would need two tiles for half the experts."""
    for c in (16, 32, 64, 128):
        if 1.25 * rows_per_expert <= c:
            return c
    return 256


class Tile(NamedTuple):
    """One kernel's launch shape: a program takes NSUB sub-tiles of BM consecutive rows of one expert (decoding
    the weights once for all of them) and BN output columns, walking the input BK values at a time."""
    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    swap: bool = False  # the decoded weights as the register operand of the dot, tokens its narrow side
    nsub: int = 1  # 1..3 (SWAP: 1)


# Per kernel and tile class (_tile_class of the mean rows per expert), with the bf16x2 decode: the fastest of
# sweeps on one gpt-oss-20b layer on an H200 (benchmarks/moe_variants.py, 2026-11-28; results/moe_variants*.json),
# where timings of one tile move by up to ~10% between passes. SWAP (weights as the register operand, tokens the
# narrow side of the dot) wins for the short tiles of small prompts; two sub-tiles of 64 rows per program for
# ~400-800 tokens (the layer 25% faster than with one 128-row tile at 512 tokens); one warp group per 128-row
# tile from ~800 tokens on (fewer warps wait at each barrier: down 2-10% faster than with two at 1024 and 2048
# tokens, gate_up about the same; in the 1024-token forward the two kernels went from 23.8 to 18.5 ms).
GATE_UP_CONFIGS = {16: Tile(16, 64, 64, 4, 3, True), 32: Tile(32, 128, 128, 8, 3, True),
                   64: Tile(64, 64, 128, 4, 3), 128: Tile(64, 64, 64, 4, 3, nsub=2), 256: Tile(128, 128, 64, 4, 3)}
DOWN_CONFIGS = {16: Tile(16, 64, 64, 4, 3, True), 32: Tile(32, 128, 128, 8, 3, True),
                64: Tile(64, 64, 128, 4, 3), 128: Tile(64, 64, 64, 4, 3, nsub=2), 256: Tile(128, 64, 64, 4, 3)}


def default_decode(x: torch.Tensor) -> int:
    """The decode variant for activations x: 2 for bf16 on sm_90+, else 0 (variant 3 was not measurably faster
    on the H200 within its run-to-run spread, see the module docstring)."""
    return 2 if x.dtype == torch.bfloat16 and _capability(x.device) >= (9, 0) else 0


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _fit(bn: int, bk: int, n: int, k: int) -> tuple[int, int]:
    """Shrink the tile for small (test) shapes: BN at most the next power of two >= n (and >= 16, the smallest
    dot), BK a divisor of k (k is a multiple of 32, the MXFP4 block)."""
    p = 16
    while p < n:
        p *= 2
    bn = min(bn, p)
    while k % bk:
        bk //= 2
    return bn, bk


def moe_mxfp4(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
              gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
              down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
              limit: float, alpha: float, configs: tuple[Tile, Tile] | None = None,
              decode: int | None = None, residual: torch.Tensor | None = None,
              norm: tuple[torch.Tensor, float] | None = None, slot_dtype: torch.dtype | None = None):
    """x [N, d] (bf16/fp16), idx/weight [N, k] -> sum_j weight[:, j] * expert_{idx[:, j]}(x), [N, d] in x.dtype;
    with `residual` [N, d], (that, residual + that), and with `norm` as well the RMSNorm of that sum (see
    sum_slots).

    Weights as the checkpoint stores them: blocks [E, 2I, d/32, 16] / [E, d, I/32, 16] uint8, scales
    [E, 2I, d/32] / [E, d, I/32] uint8, biases [E, 2I] / [E, d]. `configs` (a Tile for gate_up and one for down)
    overrides the tables, and `decode` (0, 2 or 3, see the module docstring) the default_decode choice, for
    tuning sweeps and tests. `slot_dtype`: the dtype the down kernel writes each token's k weighted expert outputs
    in, which step 3 sums in fp32 (default x's; torch.float32 for comparisons).
    """
    N, d = x.shape
    k = idx.shape[-1]
    E, two_i = gate_up_bias.shape
    I = two_i // 2
    A = N * k
    for name, t in (("gate_up_proj_blocks", gate_up_blocks), ("down_proj_blocks", down_blocks),
                    ("gate_up_proj_scales", gate_up_scales), ("down_proj_scales", down_scales)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernel walks the checkpoint layout)")
    x = x.contiguous()
    if decode is None:
        decode = default_decode(x)
    if decode >= 2 and x.dtype != torch.bfloat16:
        raise ValueError(f"decode {decode} builds bf16 values: it needs bf16 activations")
    if configs is None:
        cls = _tile_class(A / E)
        configs = (GATE_UP_CONFIGS[cls], DOWN_CONFIGS[cls])
    t1, t2 = (Tile(*c) for c in configs)
    for t in (t1, t2):
        if not 1 <= t.nsub <= 3 or (t.swap and t.nsub != 1):
            raise ValueError(f"{t}: nsub must be 1..3, and 1 with swap")
    schedules = {}  # tile height -> schedule; every height gives the same groups of rows (ranges per expert)

    def schedule(t: Tile):
        h = t.bm * t.nsub
        if h not in schedules:
            schedules[h] = moe_schedule_fused(idx, E, h)
        return schedules[h]

    # 1. gate_up + bias + clamped SwiGLU: act [A, I], rows in expert-grouped order
    s1 = schedule(t1)
    order = s1.order  # int32; the down kernel takes it with its own tiles (the groups' row ranges are the same)
    act = torch.empty(A, I, device=x.device, dtype=x.dtype)
    bn1, bk1 = _fit(t1.bn, t1.bk, two_i, d)
    _gate_up_swiglu_launch[(s1.n_tiles, cdiv(two_i, bn1))](
        x, order, gate_up_blocks, gate_up_scales, gate_up_bias, act,
        s1.tile_expert, s1.tile_start, s1.tile_end,
        d, two_i, x.stride(0), gate_up_blocks.stride(0), d // 2, gate_up_scales.stride(0), d // 32,
        gate_up_bias.stride(0), act.stride(0), float(limit), float(alpha),
        TOP_K=k, BM=t1.bm, BN=bn1, BK=bk1, NSUB=t1.nsub, SWAP=t1.swap, DECODE=decode,
        num_warps=t1.warps, num_stages=t1.stages)

    # 2. down + bias, times the routing weight, into each assignment's own row of y [A, d], rounded to x's dtype:
    # y is written once and read once (by step 3) at every layer; with fp32 slots step 3 alone took 0.47 ms of a
    # 1024-token 20b forward on an H200, with bf16 ones 0.29-0.30 (benchmarks/RESULTS.md, seventeenth session). The
    # reference path rounds each expert's output to x's dtype too (twice)
    s2 = schedule(t2)
    y = torch.empty(A, d, device=x.device, dtype=slot_dtype or x.dtype)
    bn2, bk2 = _fit(t2.bn, t2.bk, d, I)
    route_w = weight.reshape(-1).contiguous()
    _down_launch[(s2.n_tiles, cdiv(d, bn2))](
        act, order, route_w, down_blocks, down_scales, down_bias, y,
        s2.tile_expert, s2.tile_start, s2.tile_end,
        I, d, act.stride(0), down_blocks.stride(0), I // 2, down_scales.stride(0), I // 32,
        down_bias.stride(0), y.stride(0),
        BM=t2.bm, BN=bn2, BK=bk2, NSUB=t2.nsub, SWAP=t2.swap, DECODE=decode,
        num_warps=t2.warps, num_stages=t2.stages)
    # 3. each token's k weighted expert outputs, summed in fp32 in slot order, rounded once to x's dtype
    return sum_slots(y, N, x.dtype, residual, norm)
