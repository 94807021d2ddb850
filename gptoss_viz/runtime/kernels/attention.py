"""Causal GQA attention with learned sinks and an optional sliding window, without materialising the pattern.

Computes what gptoss.attention_with_sinks followed by gptoss.attend computes (SPEC.md, "Attention sinks"):
softmax over [scores of the allowed keys, sink logit], the sink column dropped, the rest mixing the values.
Flash-attention style (Dao et al. 2022, arXiv 2205.14135): each program holds BM queries of one head and walks
the allowed keys BN at a time with a running max m and running sum l. The sink is one more column with no value
vector, so the running state simply starts at it: m = sink, l = exp(sink - m) = 1, acc = 0. At the end
out = acc / l and the sink probability is exp(sink - m) / l = exp(sink - logsumexp), one number per row: cheap
to return when a hook asks for it. Sliding layers start the key loop at the window's first key, so they cost
O(T * window) instead of O(T^2). Full causal layers walk the key blocks before a query block's first query without
forming a mask (every one of those keys is allowed for every query in the block), then the diagonal ones masked.

Scores are bf16 q . k accumulated in fp32 (the reference upcasts q and k and multiplies in fp32: the products of
bf16 values are exact in fp32 in both, only the summation order differs), the softmax is fp32 (exp2 with the
log2(e) folded into the scale), and probabilities are cast to the value dtype for the p @ v product, as the
reference casts its pattern before `attend`.

Letters: B sequences, T tokens, H query heads, K key/value heads, D head dim; head h reads KV head h // (H/K).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from gptoss_viz.runtime.kernels.launch import Launcher, cdiv, pow2


@triton.jit
def _key_scores(q, k_ptr, rn, rd, T, qk_scale, skt, MASKED: tl.constexpr):
    """q [BM, D] against the keys rn: scores [BM, BN] fp32 in log2 units (with MASKED, keys past T load as 0)."""
    if MASKED:
        kt = tl.load(k_ptr + rn[None, :] * skt + rd[:, None], mask=(rn < T)[None, :], other=0.0)  # [D, BN]
    else:
        kt = tl.load(k_ptr + rn[None, :] * skt + rd[:, None])
    return tl.dot(q, kt) * qk_scale


@triton.jit
def _attn_keys(q, k_ptr, v_ptr, rm, rd, m_i, l_i, acc, n_lo, n_hi, T, window, qk_scale, skt, svt,
               BN: tl.constexpr, MASKED: tl.constexpr):
    """The running softmax state (m_i, l_i, acc) of the queries rm after keys n_lo..n_hi (block-aligned): with
    MASKED, each key is checked against causality, the window and T; without, every key is allowed for every
    query (the caller's promise), and no mask is formed."""
    for n0 in range(n_lo, n_hi, BN):
        rn = n0 + tl.arange(0, BN)
        s = _key_scores(q, k_ptr, rn, rd, T, qk_scale, skt, MASKED)  # [BM, BN] fp32, in log2 units
        if MASKED:
            allowed = (rn[None, :] <= rm[:, None]) & ((rm[:, None] - rn[None, :]) < window)
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: m_i starts at the sink
        rescale = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * rescale + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptr + rn[:, None] * svt + rd[None, :], mask=(rn < T)[:, None], other=0.0)  # [BN, D]
        else:
            v = tl.load(v_ptr + rn[:, None] * svt + rd[None, :])
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _attn_sinks_kernel(q_ptr, k_ptr, v_ptr, sinks_ptr, o_ptr, sp_ptr,
                       T, window, qk_scale,
                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, spb, sph,
                       GROUP: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       WRITE_SINK: tl.constexpr, WINDOWED: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    kvh = h // GROUP
    q_start = pid_m * BM
    rm = q_start + tl.arange(0, BM)  # query positions
    rd = tl.arange(0, D)
    mask_m = rm < T
    q = tl.load(q_ptr + b * sqb + rm[:, None] * sqt + h * sqh + rd[None, :], mask=mask_m[:, None], other=0.0)
    LOG2E: tl.constexpr = 1.4426950408889634
    sink = tl.load(sinks_ptr + h).to(tl.float32) * LOG2E  # the sink logit is not scaled by 1/sqrt(D)
    m_i = tl.zeros([BM], dtype=tl.float32) + sink  # running max, starting at the sink column
    l_i = tl.zeros([BM], dtype=tl.float32) + 1.0  # running sum of exp(. - m): the sink's own exp(0)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    kb = k_ptr + b * skb + kvh * skh
    vb = v_ptr + b * svb + kvh * svh
    if WINDOWED:  # one masked loop from the first query's first key (split too, these short loops ran 10% slower)
        lo = q_start - window + 1
        lo = (lo * (lo > 0) // BN) * BN  # clamped at 0, down to its key block
        m_i, l_i, acc = _attn_keys(q, kb, vb, rm, rd, m_i, l_i, acc, lo, q_start + BM, T, window, qk_scale, skt,
                                   svt, BN, True)
    else:  # the key blocks before the first query, whole for every query (BM is a multiple of BN), unmasked
        m_i, l_i, acc = _attn_keys(q, kb, vb, rm, rd, m_i, l_i, acc, 0, q_start, T, window, qk_scale, skt, svt, BN,
                                   False)
        # then the diagonal blocks (no key after the last query; keys past T masked for every stored row)
        m_i, l_i, acc = _attn_keys(q, kb, vb, rm, rd, m_i, l_i, acc, q_start, q_start + BM, T, window, qk_scale,
                                   skt, svt, BN, True)
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * sob + rm[:, None] * sot + h * soh + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mask_m[:, None])
    if WRITE_SINK:
        tl.store(sp_ptr + b * spb + h * sph + rm, tl.exp2(sink - m_i) / l_i, mask=mask_m)


_attn_sinks_launch = Launcher(_attn_sinks_kernel)


def _check_heads(H: int, K: int, D: int) -> None:
    if H % K:
        raise ValueError(f"{H} query heads do not divide into {K} key/value heads")
    if D & (D - 1) or D < 16:
        raise ValueError(f"head dim {D} must be a power of two >= 16 for this kernel")


def attention_with_sinks_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                               window: int | None = None, scale: float | None = None, want_sink: bool = False,
                               block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                               num_stages: int | None = None):
    """q [..., T, H, D], k/v [..., T, K, D], sinks [H] -> (out [..., T, H, D] in q.dtype,
    sink_prob [..., H, T] fp32 if want_sink else None). Same maths as attend(attention_with_sinks(...), v).
    The block sizes and launch settings are for tests and benchmarks/attention_kernel.py; by default 3 stages
    for full causal attention and 2 with a window (the faster of each on an H200: results/attention_kernel_*)."""
    *lead, T, H, D = q.shape
    K = k.shape[-2]
    _check_heads(H, K, D)
    scale = D ** -0.5 if scale is None else scale
    q3, k3, v3 = [t.reshape(-1, T, t.shape[-2], D) for t in (q, k, v)]  # [B, T, heads, D] (lists: less host time)
    q3, k3, v3 = [t if t.stride(-1) == 1 else t.contiguous() for t in (q3, k3, v3)]
    B = q3.shape[0]
    out = torch.empty(B, T, H, D, device=q.device, dtype=q.dtype)
    sink_prob = torch.empty(B, H, T, device=q.device, dtype=torch.float32) if want_sink else out
    windowed = window is not None and int(window) < T  # a window as long as the sequence = full causal
    win = int(window) if windowed else T + block_m
    if num_stages is None:
        num_stages = 2 if windowed else 3
    if block_m % block_n:
        raise ValueError(f"block_m {block_m} must be a multiple of block_n {block_n}")
    grid = (cdiv(T, block_m), H, B)
    _attn_sinks_launch[grid](
        q3, k3, v3, sinks, out, sink_prob, T, win, float(scale) * math.log2(math.e),
        q3.stride(0), q3.stride(1), q3.stride(2), k3.stride(0), k3.stride(1), k3.stride(2),
        v3.stride(0), v3.stride(1), v3.stride(2), out.stride(0), out.stride(1), out.stride(2),
        sink_prob.stride(0) if want_sink else 0, sink_prob.stride(1) if want_sink else 0,
        GROUP=H // K, D=D, BM=block_m, BN=block_n, WRITE_SINK=want_sink, WINDOWED=windowed,
        num_warps=num_warps, num_stages=num_stages)
    out = out.view(*lead, T, H, D)
    return out, (sink_prob.view(*lead, H, T) if want_sink else None)


# ---------------------------------------------------------------------------------------------------------------
# The Trace's pattern statistics without the pattern

@triton.jit
def _stats_keys(q, k_ptr, rm, rd, m_i, l_i, acc, rb, q_start, edges_ptr, n_lo, n_hi, T, window, qk_scale, skt,
                BM: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr, MASKED: tl.constexpr):
    """Keys n_lo..n_hi (block-aligned) into the running state of the queries rm: max m_i and sum l_i with the
    sink column, as the forward kernel keeps them, and acc [BM, NBP]: each row's mass in each distance bucket
    (column NB: on key 0) in units of exp2(. - m_i), rescaled with l_i whenever m_i grows. With MASKED each key is
    checked against causality, the window and T; without, every key is allowed for every query (the caller's
    promise). A bucket a tile lies wholly inside takes the row sums l_i already needs, with no mask."""
    for n0 in range(n_lo, n_hi, BN):
        rn = n0 + tl.arange(0, BN)
        s = _key_scores(q, k_ptr, rn, rd, T, qk_scale, skt, MASKED)
        d = rm[:, None] - rn[None, :]  # query position - key position
        if MASKED:
            s = tl.where((d >= 0) & (d < window), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: m_i starts at the sink
        rescale = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        row = tl.sum(p, 1)
        l_i = l_i * rescale + row
        acc = acc * rescale[:, None]
        d_min = q_start - (n0 + BN - 1)  # the distances this tile spans
        d_max = q_start + BM - 1 - n0
        for b in tl.static_range(NB):
            e_lo = tl.load(edges_ptr + b)
            e_hi = tl.load(edges_ptr + b + 1)
            if (e_lo <= d_min) & (e_hi > d_max):  # the whole tile in bucket b
                acc = tl.where(rb[None, :] == b, acc + row[:, None], acc)
            elif (e_hi > d_min) & (e_lo <= d_max):  # part of it
                mass = tl.sum(tl.where((d >= e_lo) & (d < e_hi), p, 0.0), 1)
                acc = tl.where(rb[None, :] == b, acc + mass[:, None], acc)
        if n0 == 0:
            on_first = tl.sum(tl.where(rn[None, :] == 0, p, 0.0), 1)
            acc = tl.where(rb[None, :] == NB, acc + on_first[:, None], acc)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _pattern_stats_kernel(q_ptr, k_ptr, sinks_ptr, edges_ptr, out_ptr,
                          T, window, qk_scale, sqt, sqh, skt, skh, so_m, so_h,
                          GROUP: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                          NB: tl.constexpr, NBP: tl.constexpr, WINDOWED: tl.constexpr):
    """Per (query block, head): the mass each distance bucket gets and the mass on key 0 (queries >= 1), summed
    over the block's queries, in one walk over the keys: each row's bucket sums are kept relative to its running
    max, like the forward kernel's output, and divided by its final sum at the end. Full causal layers walk the
    key blocks before the first query unmasked, then the diagonal masked; sliding layers one masked loop."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    q_start = pid_m * BM
    rm = q_start + tl.arange(0, BM)
    rd = tl.arange(0, D)
    mask_m = rm < T
    q = tl.load(q_ptr + rm[:, None] * sqt + h * sqh + rd[None, :], mask=mask_m[:, None], other=0.0)
    LOG2E: tl.constexpr = 1.4426950408889634
    sink = tl.load(sinks_ptr + h).to(tl.float32) * LOG2E
    m_i = tl.zeros([BM], dtype=tl.float32) + sink
    l_i = tl.zeros([BM], dtype=tl.float32) + 1.0
    rb = tl.arange(0, NBP)
    acc = tl.zeros([BM, NBP], dtype=tl.float32)
    kb = k_ptr + kvh * skh
    if WINDOWED:
        lo = q_start - window + 1
        lo = (lo * (lo > 0) // BN) * BN  # clamped at 0, down to its key block
        m_i, l_i, acc = _stats_keys(q, kb, rm, rd, m_i, l_i, acc, rb, q_start, edges_ptr, lo, q_start + BM, T,
                                    window, qk_scale, skt, BM, BN, NB, True)
    else:  # the key blocks before the first query, whole for every query (BM is a multiple of BN), unmasked
        m_i, l_i, acc = _stats_keys(q, kb, rm, rd, m_i, l_i, acc, rb, q_start, edges_ptr, 0, q_start, T, window,
                                    qk_scale, skt, BM, BN, NB, False)
        m_i, l_i, acc = _stats_keys(q, kb, rm, rd, m_i, l_i, acc, rb, q_start, edges_ptr, q_start, q_start + BM, T,
                                    window, qk_scale, skt, BM, BN, NB, True)
    w = tl.where(mask_m, 1.0 / l_i, 0.0)  # rows past T count nothing
    w_first = tl.where(rm >= 1, w, 0.0)  # the first-token mass is over queries 1..
    wb = tl.where(rb[None, :] == NB, w_first[:, None], w[:, None])
    dist = tl.sum(acc * wb, 0)  # [NBP]
    tl.store(out_ptr + pid_m * so_m + h * so_h + rb, dist, mask=rb <= NB)


_pattern_stats_launch = Launcher(_pattern_stats_kernel)


def pattern_stats_fused(q: torch.Tensor, k: torch.Tensor, sinks: torch.Tensor, window: int | None,
                        edges, scale: float | None = None, block_m: int = 64, block_n: int = 32,
                        num_warps: int = 4, num_stages: int = 2):
    """q [T, H, D], k [T, K, D], sinks [H], edges [B+1] (ints, increasing) -> (first_token_mass [H],
    distance_mass [H, B]) fp32: what trace.pattern_reductions computes from attention_with_sinks's pattern
    (mean over queries 1.. of the mass on key 0; mean over queries of the mass at distances edges[b] <= q - k <
    edges[b+1]), without ever holding a pattern block. Per-block partial sums are added in a fixed order. The
    default launch (64 queries by 32 keys, 4 warps, 2 stages) was the fastest of ten at 1024-4096 tokens on an
    H200, full causal and windowed (benchmarks/experiments/stats_probe.py --sweep, results/stats_sweep_h200.json)."""
    T, H, D = q.shape
    K = k.shape[1]
    _check_heads(H, K, D)
    scale = D ** -0.5 if scale is None else scale
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    e = torch.as_tensor(edges, device=q.device)  # int64 or int32: both load as integers
    NB = e.numel() - 1
    n_blocks = cdiv(T, block_m)
    out = torch.empty(n_blocks, H, NB + 1, device=q.device, dtype=torch.float32)
    windowed = window is not None and int(window) < T  # a window as long as the sequence = full causal
    win = int(window) if windowed else T + block_m
    if block_m % block_n:
        raise ValueError(f"block_m {block_m} must be a multiple of block_n {block_n}")
    _pattern_stats_launch[(n_blocks, H)](
        q, k, sinks, e, out, T, win, float(scale) * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1),
        GROUP=H // K, D=D, BM=block_m, BN=block_n, NB=NB, NBP=pow2(NB + 1), WINDOWED=windowed,
        num_warps=num_warps, num_stages=num_stages)
    tot = out.sum(0)  # [H, B+1]
    return tot[:, NB] / max(T - 1, 1), tot[:, :NB] / T
