"""Small fused kernels for the fast path: one launch where the readable reference takes eight to twenty.

At 1024 tokens a gpt-oss-20b forward launched ~4,000 kernels, ~170 per layer, most of them elementwise pieces
of RMSNorm, RoPE and the MoE tile schedule; the GPU sat idle for a quarter of the forward waiting on the host
(benchmarks/profile_forward.py). Each kernel here computes what a reference function computes:

- `rms_norm_fused`: gptoss.rms_norm (fp32 maths, cast back), optionally adding the residual first (the block's
  `x + attn(...)`, rounded to the activation dtype as the reference's bf16 add rounds it) and returning the sum.
- `embed_fused`: the token embedding with the range check of the ids (their min and max, for the host to read
  when it next waits anyway) and the first block's RMSNorm, in one launch where the forward took a copy of the ids
  to the host (a wait), torch's embedding and a norm.
- `rope_fused`: rope.apply_rope with the reference's roundings reproduced step by step (cos/sin cast to the
  activation dtype, each product and the difference rounded), so it equals the reference bit for bit.
- `top_predictions_fused`: trace.top_predictions (the top-k logits of each row and each row's logsumexp) in one
  read of the logits, where torch's topk and a chunked fp32 logsumexp took ~3 ms at 1024 tokens of gpt-oss's
  201,088-token vocabulary (benchmarks/profile_forward.py --trace).
- `moe_schedule_fused`: schedule.moe_schedule's tile arrays (expert histogram, prefix sums, tile -> expert) and
  the rows grouped by expert (a counting sort with atomics, in place of torch's argsort) and each row's token in
  one single-program kernel.
- `route_fused`: gptoss.route (the top k router logits of each token and the softmax over them) in one launch,
  where torch's topk and softmax took three kernels.
- `router_route_fused`: the router's linear and route in one launch, where the fast path took three kernels
  (cuBLAS's split-K GEMM and its reduction, route); optionally with the MoE schedule's grouping of the
  assignments (each one's rank within its expert by atomics, the tile arrays from the program that finishes
  last), which `group_rows_fused` completes while it gathers the rows: two launches where the schedule, the
  router and the row gather took three.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from gptoss_viz.runtime.kernels.launch import Launcher, cdiv, pow2
from gptoss_viz.runtime.kernels.schedule import MoeSchedule, max_tiles

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (no libdevice), set at start


@triton.jit
def _round_to(x, DT: tl.constexpr):
    """fp32 -> fp32 holding the nearest DT value (ties to even). For bf16 by integer arithmetic: Triton folds a
    plain `.to(bf16).to(fp32)` round trip away (measured on an H200: the RoPE products came out unrounded)."""
    if DT == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000  # finite inputs
        y = b.to(tl.float32, bitcast=True)
    else:
        y = x.to(DT).to(tl.float32)
    return y


@triton.jit
def _rms_norm_row(xf, w_ptr, cols, mask, N, eps):
    """The RMSNorm of one row xf (fp32, 0 past N) with the weight at w_ptr, in fp32: what every kernel that ends in
    the norm computes (_rms_norm_kernel, _embed_kernel, moe._sum_slots_kernel), in one order of operations, so that
    the same block and warps give the same bits."""
    ms = tl.sum(xf * xf, 0) / N
    y = xf / tl.sqrt_rn(ms + eps)
    return tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) * y


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr, N, eps, stride_x, stride_r, stride_o, stride_s,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0)
        xf = _round_to(x.to(tl.float32) + r.to(tl.float32), x.dtype)  # the reference's x + r, rounded like it
        tl.store(sum_ptr + row * stride_s + cols, xf.to(x.dtype), mask=mask)
    else:
        xf = x.to(tl.float32)
    y = _rms_norm_row(xf, w_ptr, cols, mask, N, eps)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


_rms_norm_launch = Launcher(_rms_norm_kernel)


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """rms_norm(x, weight, eps), or with `residual`: s = x + residual, returns (rms_norm(s, ...), s)."""
    shape = x.shape
    N = shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, N)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    out = torch.empty_like(x2)  # contiguous: a 2-D x2 with unit column stride is dense only with row stride N
    # (torch.empty_like: ~2 us of host time; torch.empty with a shape, device and dtype: ~5)
    if residual is not None:
        r2 = residual if residual.dim() == 2 else residual.reshape(-1, N)
        r2 = r2 if r2.stride(-1) == 1 else r2.contiguous()
        s = torch.empty_like(out)
    else:
        r2 = s = x2
    _rms_norm_launch[(x2.shape[0],)](x2, r2, weight, out, s, N, float(eps), x2.stride(0), r2.stride(0),
                                     N, s.stride(0), HAS_RES=residual is not None, BLOCK=rms_block(N), num_warps=8)
    if residual is None:
        return out if len(shape) == 2 else out.view(shape)
    return (out, s) if len(shape) == 2 else (out.view(shape), s.view(shape))


@triton.jit
def _embed_kernel(ids_ptr, w_ptr, x_ptr, nw_ptr, normed_ptr, range_ptr, T, V, N, eps, stride_w,
                  NORM: tl.constexpr, BLOCK: tl.constexpr, BR: tl.constexpr):
    """Row t of x = w[ids[t]] (w's row 0 for an id outside 0..V-1, so that nothing is read out of bounds: the caller
    rejects such ids from range_ptr), with NORM its RMSNorm as _rms_norm_kernel computes it (same block, warps and
    sums: the same bits); program 0 also writes the ids' min and max to range_ptr[0], range_ptr[1]."""
    t = tl.program_id(0).to(tl.int64)
    i = tl.load(ids_ptr + t).to(tl.int64)
    i = tl.where((i >= 0) & (i < V), i, 0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(w_ptr + i * stride_w + cols, mask=mask, other=0.0)
    tl.store(x_ptr + t * N + cols, x, mask=mask)
    if NORM:
        y = _rms_norm_row(x.to(tl.float32), nw_ptr, cols, mask, N, eps)
        tl.store(normed_ptr + t * N + cols, y.to(normed_ptr.dtype.element_ty), mask=mask)
    if t == 0:
        BIG: tl.constexpr = 2 ** 62
        lo = tl.full([BR], BIG, tl.int64)
        hi = tl.full([BR], -BIG, tl.int64)
        for r0 in range(0, T, BR):
            r = r0 + tl.arange(0, BR)
            v = tl.load(ids_ptr + r, mask=r < T, other=0).to(tl.int64)
            lo = tl.minimum(lo, tl.where(r < T, v, BIG))
            hi = tl.maximum(hi, tl.where(r < T, v, -BIG))
        tl.store(range_ptr, tl.min(lo, 0))
        tl.store(range_ptr + 1, tl.max(hi, 0))


_embed_launch = Launcher(_embed_kernel)


def embed_fused(ids: torch.Tensor, weight: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None):
    """F.embedding(ids, weight) for integer ids [...] on the GPU without waiting for the host: (x [..., d], the
    RMSNorm of x with `norm` (weight [d], eps) as rms_norm_fused computes it (else None), id_range), all from one
    launch. id_range [2] int64 (on the device) holds the ids' min and max; the caller must reject the result unless
    0 <= min and max < V (weight [V, d]): an id outside that range reads row 0 instead (no read out of bounds)."""
    V, N = weight.shape
    flat = ids.reshape(-1)
    flat = flat if flat.is_contiguous() else flat.contiguous()
    T = flat.shape[0]
    x = torch.empty(T, N, device=weight.device, dtype=weight.dtype)
    normed = torch.empty_like(x) if norm is not None else x
    nw, eps = norm if norm is not None else (weight, 0.0)
    id_range = torch.empty(2, device=weight.device, dtype=torch.int64)
    _embed_launch[(T,)](flat, weight, x, nw, normed, id_range, T, V, N, float(eps), weight.stride(0),
                        NORM=norm is not None, BLOCK=rms_block(N), BR=1024, num_warps=8)
    shape = (*ids.shape, N)
    return x.view(shape), (normed.view(shape) if norm is not None else None), id_range


def rms_block(N: int) -> int:
    """The block _rms_norm_kernel reduces a row of N over (with 8 warps): kernels that end in the same norm use it
    too, so that their sums of squares add in the same order (moe.sum_slots with `norm`)."""
    return pow2(N)


@triton.jit
def _rope_rows(x_ptr, cos_ptr, sin_ptr, out_ptr, t, n_heads, stride_xt, stride_xh, stride_c,
               HALF: tl.constexpr, BH: tl.constexpr):
    """Token t of x [T, heads, 2 * HALF], rotated, into out (contiguous)."""
    rh = tl.arange(0, BH)
    ri = tl.arange(0, HALF)
    mask = (rh < n_heads)[:, None]
    DT = out_ptr.dtype.element_ty
    c = _round_to(tl.load(cos_ptr + t * stride_c + ri), DT)[None, :]  # cos.to(x.dtype)
    s = _round_to(tl.load(sin_ptr + t * stride_c + ri), DT)[None, :]
    base = x_ptr + t * stride_xt + rh[:, None] * stride_xh + ri[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    # each elementwise op of the reference rounds to the activation dtype: reproduce every rounding
    o1 = _round_to(_round_to(x1 * c, DT) - _round_to(x2 * s, DT), DT).to(DT)
    o2 = _round_to(_round_to(x2 * c, DT) + _round_to(x1 * s, DT), DT).to(DT)
    ob = out_ptr + t * (n_heads * 2 * HALF) + rh[:, None] * (2 * HALF) + ri[None, :]
    tl.store(ob, o1, mask=mask)
    tl.store(ob + HALF, o2, mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_out, k_out, q_heads, k_heads, stride_qt, stride_qh,
                 stride_kt, stride_kh, stride_c, HALF: tl.constexpr, BH: tl.constexpr):
    """Program (t, 0) rotates token t of q, program (t, 1) token t of k (when k is given: k_heads > 0)."""
    t = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        _rope_rows(q_ptr, cos_ptr, sin_ptr, q_out, t, q_heads, stride_qt, stride_qh, stride_c, HALF, BH)
    else:
        _rope_rows(k_ptr, cos_ptr, sin_ptr, k_out, t, k_heads, stride_kt, stride_kh, stride_c, HALF, BH)


_rope_launch = Launcher(_rope_kernel)


def rope_fused(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """apply_rope(q, cos, sin) for q [T, heads, D] (half precision; D/2 a power of two): a new contiguous tensor.
    With k [T, heads_k, D] as well, (apply_rope(q, ...), apply_rope(k, ...)) from one launch."""
    T, q_heads, D = q.shape
    q = q if q.stride(-1) == 1 else q.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    q_out = torch.empty(T, q_heads, D, device=q.device, dtype=q.dtype)
    if k is None:
        k_src, k_out, k_heads, n = q, q_out, 0, 1
    else:
        if k.shape[0] != T or k.shape[2] != D or k.dtype != q.dtype:
            raise ValueError(f"rope_fused: k {tuple(k.shape)} {k.dtype} does not match q {tuple(q.shape)} {q.dtype}")
        k_src = k if k.stride(-1) == 1 else k.contiguous()
        k_heads = k.shape[1]
        k_out, n = torch.empty(T, k_heads, D, device=q.device, dtype=q.dtype), 2
    _rope_launch[(T, n)](q, k_src, cos, sin, q_out, k_out, q_heads, k_heads, q.stride(0), q.stride(1),
                         k_src.stride(0), k_src.stride(1), cos.stride(0),
                         HALF=D // 2, BH=pow2(max(q_heads, k_heads)), num_warps=4)
    return q_out if k is None else (q_out, k_out)


def rope_fused_ok(x: torch.Tensor) -> bool:
    D = x.shape[-1]
    return x.dim() == 3 and D >= 2 and not (D // 2) & (D // 2 - 1) and x.dtype == torch.bfloat16


@triton.jit
def _schedule_kernel(idx_ptr, order_ptr, token_ptr, cursor_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr, A, E,
                     n_tiles, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, EP: tl.constexpr, CHUNK: tl.constexpr,
                     TB: tl.constexpr):
    re = tl.arange(0, EP)
    counts = tl.zeros([EP], dtype=tl.int32)
    for a0 in range(0, A, CHUNK):
        ra = a0 + tl.arange(0, CHUNK)
        v = tl.load(idx_ptr + ra, mask=ra < A, other=EP - 1).to(tl.int32)  # padding goes to a spare bin (>= E)
        counts += tl.histogram(v, EP)
    counts = tl.where(re < E, counts, 0)
    ends = tl.cumsum(counts, 0)  # [EP] end row of each expert's group
    starts = ends - counts
    # order: each assignment takes the next free row of its expert's group (a counting sort). Rows within a group
    # come out in whatever order the atomics serve them; nothing downstream depends on it (every row's dots are
    # its own, and each token's k outputs are summed by slot), so the MoE output stays deterministic. (A stable
    # sort by prefix sums over a one-hot matrix was 6-20x slower: benchmarks/experiments/schedule_probe.py.)
    tl.store(cursor_ptr + re, starts)
    tl.debug_barrier()  # the cursors are in place for every thread of the program before the first atomic
    for a0 in range(0, A, CHUNK):
        ra = a0 + tl.arange(0, CHUNK)
        m = ra < A
        v = tl.load(idx_ptr + ra, mask=m, other=0).to(tl.int32)
        row = tl.atomic_add(cursor_ptr + v, 1, mask=m)
        tl.store(order_ptr + row, ra, mask=m)
        tl.store(token_ptr + row, ra // TOP_K, mask=m)
    _tile_table(counts, starts, ends, re, E, n_tiles, tile_expert_ptr, tile_start_ptr, tile_end_ptr, BLOCK_M, TB)


@triton.jit
def _tile_table(counts, starts, ends, re, E, n_tiles, tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                BLOCK_M: tl.constexpr, TB: tl.constexpr):
    """The experts' row counts [EP] (0 past E) and their groups' first and end rows -> schedule.moe_schedule's
    tile arrays: each expert's rows cut into tiles of BLOCK_M; first every tile of BLOCK_M rows (by expert), then
    each expert's shorter last tile, the fullest first (equal ones by expert); spare tiles empty (expert E - 1)."""
    EP: tl.constexpr = counts.shape[0]
    tiles = (counts + BLOCK_M - 1) // BLOCK_M
    last = counts - (tiles - 1) * BLOCK_M  # rows of its last tile (BLOCK_M for an expert with none)
    partial = (counts > 0) & (last < BLOCK_M)
    full = tiles - partial.to(tl.int32)  # tiles of BLOCK_M rows
    full_ends = tl.cumsum(full, 0)
    full_begins = full_ends - full
    n_full = tl.sum(full, 0)
    n_real = n_full + tl.sum(partial.to(tl.int32), 0)
    # the experts with a short last tile, fullest first, then by expert: sorted keys (unique), expert = key % EP
    by_rows = tl.sort(tl.where(partial, BLOCK_M - last, BLOCK_M + 1) * EP + re) % EP
    for t0 in range(0, n_tiles, TB):
        t = t0 + tl.arange(0, TB)
        in_full = t < n_full
        e_full = tl.sum((full_ends[None, :] <= t[:, None]).to(tl.int32), 1)  # tile t's expert, if t < n_full
        e_last = tl.sum(tl.where(re[None, :] == (t - n_full)[:, None], by_rows[None, :], 0), 1)
        valid = t < n_real
        e = tl.where(valid, tl.where(in_full, e_full, e_last), E - 1)
        sel = re[None, :] == e[:, None]  # one-hot [TB, EP]: gather by expert
        st = tl.sum(tl.where(sel, starts[None, :], 0), 1)
        fb = tl.sum(tl.where(sel, full_begins[None, :], 0), 1)
        nt = tl.sum(tl.where(sel, tiles[None, :], 0), 1)
        en = tl.sum(tl.where(sel, ends[None, :], 0), 1)
        start = tl.where(in_full, st + (t - fb) * BLOCK_M, st + (nt - 1) * BLOCK_M)
        m = t < n_tiles
        tl.store(tile_expert_ptr + t, e, mask=m)
        tl.store(tile_start_ptr + t, tl.where(valid, start, 0), mask=m)
        tl.store(tile_end_ptr + t, tl.where(valid, en, 0), mask=m)


_schedule_launch = Launcher(_schedule_kernel)


def moe_schedule_fused(idx: torch.Tensor, n_experts: int, block_m: int) -> MoeSchedule:
    """schedule.moe_schedule(idx [N, k], n_experts, block_m) in one launch: the same tile arrays, and an `order`
    and `token` (int32) that group the assignments by expert as the reference's do, though not necessarily in
    ascending order within a group (see _schedule_kernel)."""
    flat = idx.reshape(-1)
    A = flat.numel()
    k = idx.shape[-1] if idx.dim() > 1 else 1
    n = max_tiles(A, n_experts, block_m)
    EP = pow2(n_experts + 1)
    buf = torch.empty(3 * n + 2 * A + EP, device=idx.device, dtype=torch.int32)  # tiles, order, token, cursors
    t_expert, t_start, t_end, order, token, cursor = buf.split_with_sizes([n, n, n, A, A, EP])
    # 16 warps, more atomics in flight; from 2048 assignments (512 tokens of 20b) 4096 a pass with 32 warps: 12-18%
    # less time at 1024-4096 tokens of 20b and 120b, 2% at 512 (benchmarks/experiments/schedule_chunk_probe.py)
    chunk, warps = (4096, 32) if A >= 2048 else (1024, 16)
    _schedule_launch[(1,)](flat, order, token, cursor, t_expert, t_start, t_end, A, n_experts, n, TOP_K=k,
                           BLOCK_M=block_m, EP=EP, CHUNK=chunk, TB=64, num_warps=warps)
    return MoeSchedule(order=order, tile_expert=t_expert, tile_start=t_start, tile_end=t_end, n_tiles=n, token=token)


@triton.jit
def _top_k_softmax(x, rows, rmask, cols, E, idx_ptr, w_ptr, K: tl.constexpr, KP: tl.constexpr, EXPF: tl.constexpr):
    """x [BT, EP] fp32 logits (-inf past E) of rows: the K largest of each row, largest first (equal values: lower
    column first) into idx_ptr [T, K], and the softmax over them in fp32 as torch computes it (exp(v - max) with
    libdevice's expf, as CUDA's expf, unless EXPF is off for Triton's interpreter, which has no libdevice; over
    their sum, IEEE division), rounded to w_ptr's dtype. Returns the chosen columns [BT, KP] int32 (slot j in
    column j; 0 past K)."""
    EP: tl.constexpr = x.shape[1]
    slots = tl.arange(0, KP)
    top = tl.zeros([x.shape[0], KP], dtype=tl.float32)
    chosen = tl.zeros([x.shape[0], KP], dtype=tl.int32)
    for j in tl.static_range(K):
        v = tl.max(x, 1)  # [BT]
        i = tl.min(tl.where(x == v[:, None], cols[None, :], EP), 1)  # the first column holding it
        i = tl.minimum(i, E - 1)  # (a NaN row matches no column: keep the index in range)
        tl.store(idx_ptr + rows.to(tl.int64) * K + j, i.to(tl.int64), mask=rmask)
        top = tl.where(slots[None, :] == j, v[:, None], top)
        chosen = tl.where(slots[None, :] == j, i[:, None], chosen)
        x = tl.where(cols[None, :] == i[:, None], float("-inf"), x)
    m = tl.max(tl.where(slots[None, :] < K, top, float("-inf")), 1)
    if EXPF:
        e = libdevice.exp(top - m[:, None])
    else:
        e = tl.exp(top - m[:, None])
    e = tl.where(slots[None, :] < K, e, 0.0)
    w = tl.math.div_rn(e, tl.sum(e, 1)[:, None])
    tl.store(w_ptr + rows[:, None].to(tl.int64) * K + slots[None, :], w.to(w_ptr.dtype.element_ty),
             mask=rmask[:, None] & (slots[None, :] < K))
    return chosen


@triton.jit
def _route_kernel(x_ptr, idx_ptr, w_ptr, T, E, stride_x, K: tl.constexpr, BT: tl.constexpr, EP: tl.constexpr,
                  KP: tl.constexpr, EXPF: tl.constexpr):
    """BT tokens' logits -> _top_k_softmax."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.arange(0, EP)
    rmask = rows < T
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :],
                mask=rmask[:, None] & (cols < E)[None, :], other=float("-inf")).to(tl.float32)
    _top_k_softmax(x, rows, rmask, cols, E, idx_ptr, w_ptr, K, KP, EXPF)


_route_launch = Launcher(_route_kernel)


def route_fused(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gptoss.route in one launch: logits [..., E] -> (idx int64, weight in the logits' dtype) [..., k]. Among
    equal logits the lower expert comes first (torch.topk leaves that order open)."""
    E = logits.shape[-1]
    if not 1 <= k <= E:
        raise ValueError(f"route_fused: k={k} must be between 1 and the {E} experts")
    x = logits if logits.dim() == 2 else logits.reshape(-1, E)
    x = x if x.stride(-1) == 1 else x.contiguous()
    T = x.shape[0]
    idx = torch.empty(T, k, device=x.device, dtype=torch.int64)
    weight = torch.empty(T, k, device=x.device, dtype=x.dtype)
    BT = 32
    _route_launch[(cdiv(T, BT),)](x, idx, weight, T, E, x.stride(0), K=k, BT=BT, EP=pow2(E), KP=pow2(k),
                                  EXPF=not _INTERPRETED, num_warps=4)
    if logits.dim() == 2:
        return idx, weight
    shape = (*logits.shape[:-1], k)
    return idx.view(shape), weight.view(shape)


@triton.jit
def _router_route_kernel(h_ptr, rw_ptr, rb_ptr, logit_ptr, idx_ptr, wt_ptr, T, D, E, stride_h,
                         count_ptr, rank_ptr, starts_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_tiles,
                         K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, EP: tl.constexpr, KP: tl.constexpr,
                         EXPF: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, TB: tl.constexpr):
    """BT tokens: the router's logits h W^T + b (tensor-core dots over BD-wide chunks of the hidden size, fp32
    accumulation, rounded once to h's dtype as the half-precision linear rounds them) and _top_k_softmax of those
    rounded logits. With GROUP, also what the MoE kernels' schedule needs (_group_assignments)."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < T
    r64 = rows.to(tl.int64)
    ecols = tl.arange(0, EP)
    emask = ecols < E
    acc = tl.zeros([BT, EP], dtype=tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cmask = cols < D
        h = tl.load(h_ptr + r64[:, None] * stride_h + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        w = tl.load(rw_ptr + ecols[None, :].to(tl.int64) * D + cols[:, None], mask=cmask[:, None] & emask[None, :],
                    other=0.0)  # [BD, EP]: a chunk of W^T
        acc = tl.dot(h, w, acc)
    DT = logit_ptr.dtype.element_ty
    b = tl.load(rb_ptr + ecols, mask=emask, other=0.0).to(tl.float32)
    logits = (acc + b[None, :]).to(DT)
    tl.store(logit_ptr + r64[:, None] * E + ecols[None, :], logits, mask=rmask[:, None] & emask[None, :])
    z = tl.where(emask[None, :], logits.to(tl.float32), float("-inf"))
    chosen = _top_k_softmax(z, rows, rmask, ecols, E, idx_ptr, wt_ptr, K, KP, EXPF)
    if GROUP:
        _group_assignments(chosen, r64, rmask, ecols, E, count_ptr, rank_ptr, starts_ptr, tile_expert_ptr,
                           tile_start_ptr, tile_end_ptr, n_tiles, K, KP, EP, BLOCK_M, TB)


@triton.jit
def _group_assignments(chosen, r64, rmask, ecols, E, count_ptr, rank_ptr, starts_ptr, tile_expert_ptr,
                       tile_start_ptr, tile_end_ptr, n_tiles, K: tl.constexpr, KP: tl.constexpr, EP: tl.constexpr,
                       BLOCK_M: tl.constexpr, TB: tl.constexpr):
    """The expert-grouped order of this program's assignments (t * K + j, expert chosen [BT, KP]) without a pass
    of its own: each takes the next rank among its expert's assignments from the expert's counter (count_ptr
    [EP], an atomic, so ranks within an expert come in whatever order the atomics serve them, as in
    _schedule_kernel, and nothing downstream depends on it); the program that finishes last (a ticket,
    count_ptr[EP]) reads the final counts, writes each expert's first grouped row (starts_ptr [EP]) and the tile
    arrays (_tile_table), and sets the counters and the ticket back to 0 for the next launch."""
    slots = tl.arange(0, KP)
    amask = rmask[:, None] & (slots[None, :] < K)
    rank = tl.atomic_add(count_ptr + chosen, 1, mask=amask, sem="relaxed")
    tl.store(rank_ptr + r64[:, None] * K + slots[None, :], rank, mask=amask)
    tl.debug_barrier()  # every thread's counter atomics are done (their ranks stored) before the ticket is taken
    ticket = tl.atomic_add(count_ptr + EP, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:  # the last program: every counter is final
        counts = tl.atomic_xchg(count_ptr + ecols, 0)  # read and reset in one
        counts = tl.where(ecols < E, counts, 0)
        ends = tl.cumsum(counts, 0)
        starts = ends - counts
        tl.store(starts_ptr + ecols, starts)
        _tile_table(counts, starts, ends, ecols, E, n_tiles, tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                    BLOCK_M, TB)
        tl.atomic_xchg(count_ptr + EP, 0)


_router_route_launch = Launcher(_router_route_kernel)


class Grouping(NamedTuple):
    """What router_route_fused(..., block_m=BM) computes beyond the routing for the MoE kernels' schedule: each
    assignment's rank among its expert's ([A] int32, A = T * k), each expert's first grouped row ([EP] int32), and
    schedule.moe_schedule's tile arrays for tiles of block_m rows. group_rows_fused completes it."""
    rank: torch.Tensor
    starts: torch.Tensor
    tile_expert: torch.Tensor
    tile_start: torch.Tensor
    tile_end: torch.Tensor
    n_tiles: int
    block_m: int


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", lambda i: torch.cuda.current_stream(i).cuda_stream)
_GROUP_COUNTERS: dict = {}  # (device, stream) -> [EP + 1] int32 zeros: the experts' counters and the ticket


def _group_counters(device: torch.device, size: int) -> torch.Tensor:
    """Counters that _group_assignments leaves at zero after every launch, one set per device and stream (launches
    on one stream run one after another; two streams would share nothing)."""
    key = (str(device), _raw_stream(device.index) if device.type == "cuda" else None)
    c = _GROUP_COUNTERS.get(key)
    if c is None or c.numel() < size:
        if len(_GROUP_COUNTERS) >= 64:  # (streams come and go: probes capture graphs on new ones)
            _GROUP_COUNTERS.clear()
        c = _GROUP_COUNTERS[key] = torch.zeros(size, device=device, dtype=torch.int32)
    return c


def router_route_ok(h: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor) -> bool:
    """Whether router_route_fused takes h [..., d] and this router (weight [E, d] with E <= 256, bias [E]): half
    precision, the router's weights in h's dtype."""
    return (h.dtype in (torch.bfloat16, torch.float16) and router_weight.dtype == h.dtype
            and router_bias.dtype == h.dtype and router_weight.dim() == 2 and router_weight.shape[1] == h.shape[-1]
            and router_weight.shape[0] <= 256 and router_weight.is_contiguous()
            and router_bias.shape == router_weight.shape[:1])


def router_route_fused(h: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor, k: int,
                       block_m: int | None = None):
    """The router's linear and gptoss.route in one launch: h [..., d] -> (logits [..., E] in h's dtype, idx
    [..., k] int64, weight [..., k] in h's dtype), where the fast path took three kernels (cuBLAS's split-K GEMM
    and its reduction, then route_fused). The logits are F.linear(h, router_weight, router_bias) with the same
    products summed in another order (within the rounding of h's dtype); idx and weight are route_fused's choice
    from these logits, bit for bit. With `block_m`, a fourth item: the Grouping of the assignments for MoE tiles
    of block_m rows (in the same launch, in place of moe_schedule_fused's; group_rows_fused completes it)."""
    E, D = router_weight.shape
    if not 1 <= k <= E:
        raise ValueError(f"router_route_fused: k={k} must be between 1 and the {E} experts")
    if block_m is not None and block_m < 1:
        raise ValueError(f"router_route_fused: block_m={block_m} must be at least 1")
    if not router_route_ok(h, router_weight, router_bias):
        raise ValueError(f"router_route_fused: h {tuple(h.shape)} {h.dtype} and router {tuple(router_weight.shape)} "
                         f"{router_weight.dtype} / bias {tuple(router_bias.shape)} {router_bias.dtype} do not fit")
    h2 = h if h.dim() == 2 else h.reshape(-1, D)
    h2 = h2 if h2.stride(-1) == 1 else h2.contiguous()
    T = h2.shape[0]
    logits = torch.empty(T, E, device=h.device, dtype=h.dtype)
    idx = torch.empty(T, k, device=h.device, dtype=torch.int64)
    weight = torch.empty(T, k, device=h.device, dtype=h.dtype)
    # tiles from benchmarks/experiments/router_probe.py (H200, 20b's router): 16 rows a program, the smallest
    # tensor-core tile, up to 2048 tokens (7.7-7.9 us at 128 and 1024 tokens, as cuBLAS's linear and route_fused
    # together), 32 above (at 4096 tokens 9.8 us, 16 rows 11.8, cuBLAS and route_fused 8.4)
    BT = 16 if T <= 2048 else 32
    EP = max(16, pow2(E))
    grouping = None
    if block_m is None:
        counters = rank = starts = t_expert = t_start = t_end = idx  # (unused: GROUP off)
        n = 0
    else:
        A = T * k
        n = max_tiles(A, E, block_m)
        buf = torch.empty(A + EP + 3 * n, device=h.device, dtype=torch.int32)
        rank, starts, t_expert, t_start, t_end = buf.split_with_sizes([A, EP, n, n, n])
        counters = _group_counters(h.device, EP + 1)
        grouping = Grouping(rank, starts, t_expert, t_start, t_end, n, block_m)
    _router_route_launch[(cdiv(T, BT),)](h2, router_weight, router_bias, logits, idx, weight, T, D, E, h2.stride(0),
                                         counters, rank, starts, t_expert, t_start, t_end, n,
                                         K=k, BT=BT, BD=256, EP=EP, KP=pow2(k), EXPF=not _INTERPRETED,
                                         GROUP=grouping is not None, BLOCK_M=block_m or 1, TB=64,
                                         num_warps=4, num_stages=3)
    if h.dim() != 2:
        lead = h.shape[:-1]
        logits, idx, weight = logits.view(*lead, E), idx.view(*lead, k), weight.view(*lead, k)
    return (logits, idx, weight) if grouping is None else (logits, idx, weight, grouping)


@triton.jit
def _group_rows_kernel(x_ptr, idx_ptr, rank_ptr, starts_ptr, xs_ptr, order_ptr, token_ptr, A, D, stride_x,
                       stride_xs, K: tl.constexpr, BA: tl.constexpr, BD: tl.constexpr):
    """BA assignments (t * K + j) by BD columns: an assignment's grouped row is its expert's first row plus its
    rank; x's row t is copied there, and the first column block records the row's assignment and token."""
    ra = tl.program_id(0) * BA + tl.arange(0, BA)
    am = ra < A
    e = tl.load(idx_ptr + ra, mask=am, other=0)
    dest = tl.load(starts_ptr + e, mask=am, other=0) + tl.load(rank_ptr + ra, mask=am, other=0)
    tok = ra // K
    if tl.program_id(1) == 0:
        tl.store(order_ptr + dest, ra, mask=am)
        tl.store(token_ptr + dest, tok, mask=am)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    m = am[:, None] & (cols < D)[None, :]
    v = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=m)
    tl.store(xs_ptr + dest.to(tl.int64)[:, None] * stride_xs + cols[None, :], v, mask=m)


_group_rows_launch = Launcher(_group_rows_kernel)


def group_rows_fused(x: torch.Tensor, idx: torch.Tensor, grouping: Grouping):
    """x [N, d] and the routing idx [N, k] that router_route_fused grouped -> (x's rows in expert-grouped order
    [N * k, d], the MoeSchedule of those rows): what moe_schedule_fused(idx, E, grouping.block_m) and
    x.index_select(0, schedule.token) give, the rows within each expert in the order of their ranks, in one
    launch."""
    N, d = x.shape
    A = idx.numel()
    if A != N * (idx.shape[-1] if idx.dim() > 1 else 1) or grouping.rank.numel() != A:
        raise ValueError(f"group_rows_fused: idx {tuple(idx.shape)} does not route the {N} rows of x as grouped")
    x = x if x.stride(-1) == 1 else x.contiguous()
    flat = idx.reshape(-1)
    xs = torch.empty(A, d, device=x.device, dtype=x.dtype)
    order, token = torch.empty(2 * A, device=x.device, dtype=torch.int32).split_with_sizes([A, A])
    BA, BD = 32, 512
    _group_rows_launch[(cdiv(A, BA), cdiv(d, BD))](x, flat, grouping.rank, grouping.starts, xs, order, token, A, d,
                                                   x.stride(0), xs.stride(0), K=A // N, BA=BA, BD=BD, num_warps=4)
    return xs, MoeSchedule(order=order, tile_expert=grouping.tile_expert, tile_start=grouping.tile_start,
                           tile_end=grouping.tile_end, n_tiles=grouping.n_tiles, token=token)


@triton.jit
def _top_lse_kernel(x_ptr, val_ptr, idx_ptr, max_ptr, sum_ptr, V, stride_x, n_chunks,
                    K: tl.constexpr, CHUNK: tl.constexpr):
    """One chunk of one row: its K largest values (first index among equal ones) and their columns, its max and
    sum(exp(x - max)) in fp32."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs = tl.arange(0, CHUNK)
    cols = c * CHUNK + offs
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # a chunk of -inf logits adds 0, not nan
    out = row * n_chunks + c
    tl.store(max_ptr + out, m)
    tl.store(sum_ptr + out, tl.sum(tl.exp(x - m_safe), 0))
    for j in tl.static_range(K):
        v = tl.max(x, 0)
        i = tl.min(tl.where(x == v, offs, CHUNK), 0)  # the first column holding the max
        tl.store(val_ptr + out * K + j, v)
        tl.store(idx_ptr + out * K + j, tl.minimum(c * CHUNK + i, V - 1))  # a column past V only for -inf
        x = tl.where(offs == i, float("-inf"), x)


_top_lse_launch = Launcher(_top_lse_kernel)


def top_predictions_fused(logits: torch.Tensor, k: int, chunk: int = 4096):
    """trace.top_predictions on the GPU: (probabilities, ids) [T, k] of each row's k largest logits, the
    probabilities exp(logit - logsumexp(row)) in fp32. Each chunk of `chunk` columns gives its k largest values and
    its own max and exp-sum in one read; the k largest of the chunks' candidates are the row's (ties: any of the
    equal logits may come first, as with torch.topk; in a row with fewer than k finite logits the -inf ones may
    repeat a column)."""
    V = logits.shape[-1]
    x = logits.reshape(-1, V)
    x = x if x.stride(-1) == 1 else x.contiguous()
    T = x.shape[0]
    n = cdiv(V, chunk)
    vals = torch.empty(T, n * k, device=x.device, dtype=torch.float32)
    cols = torch.empty(T, n * k, device=x.device, dtype=torch.int64)
    mx = torch.empty(T, n, device=x.device, dtype=torch.float32)
    sm = torch.empty(T, n, device=x.device, dtype=torch.float32)
    _top_lse_launch[(T, n)](x, vals, cols, mx, sm, V, x.stride(0), n, K=k, CHUNK=chunk, num_warps=8)
    top, pos = vals.topk(k, dim=-1)
    ids = cols.gather(-1, pos)
    m = mx.max(-1, keepdim=True).values
    lse = m + (sm * (mx - m).exp()).sum(-1, keepdim=True).log()
    return (top - lse).exp().view(*logits.shape[:-1], k), ids.view(*logits.shape[:-1], k)
