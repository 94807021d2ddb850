"""gpt-oss (OpenAI 2025) in plain PyTorch, with a hook point at every tensor the explainer shows.

Facts from ../shared/SPEC.md (checked against OpenAI's reference and Hugging Face transformers):
pre-RMSNorm blocks; grouped-query attention with biases and one learned sink logit per head; even layers attend
within a sliding window of 128 keys, odd layers attend to the full causal prefix; RoPE with YaRN (half-split
pairs); a mixture of experts per layer (router top-k, softmax over the chosen k, clamped SwiGLU experts whose
weights are stored in MXFP4 and dequantized one expert at a time); untied lm_head.

This file is the readable reference. On CUDA, Attention and MoE hand their core to Triton kernels
(runtime/kernels: same maths, tested against these functions) unless a hook needs a tensor the kernel never forms
(hook_pattern); `GptOss.last_path` records which path each part took, `GptOss.use_kernels = False` turns them off.

Dimension letters (shapes are for one sequence; a leading batch dimension B is allowed everywhere):
    T tokens, d hidden size, H query heads, K key/value heads, D head dim, E experts, k experts per token,
    I expert width, V vocab, N = number of (token, expert) assignments routed to one expert.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from gptoss_viz.errors import InputError
from gptoss_viz.runtime.configs import GptOssConfig
from gptoss_viz.runtime.hooks import (HookedModel, HookPoint, defer_check, drop_deferred_checks,
                                      run_deferred_checks)
from gptoss_viz.runtime.mxfp4 import (from_hopper_order, from_hopper_scales, mxfp4_dequant, to_hopper_order,
                                      to_hopper_scales)
from gptoss_viz.runtime.rope import apply_rope, inv_freq_for, rope_cos_sin, rope_inv_freq


# ---------------------------------------------------------------------------------------------------------------
# The maths, as pure functions: the model calls them, and so do the explainer views.

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back (no mean subtraction, no bias)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def causal_window_mask(t_q: int, t_k: int, window: int | None, device=None) -> torch.Tensor:
    """bool [t_q, t_k], True where query i may attend key j: j <= i and, with a window, i - j < window.

    Queries are the last t_q positions of the t_k keys. The window counts the query itself: 128 keys in all.
    """
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= (q_pos - k_pos) < window
    return allowed


def attention_with_sinks(q: torch.Tensor, k: torch.Tensor, sinks: torch.Tensor, window: int | None = None,
                         scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal GQA attention probabilities with a learned sink logit per head.

    q [..., T, H, D]; k [..., T, K, D]; sinks [H]. Query head h reads key head h // (H / K).
    The sink logit is appended to every row of scores as an extra column (not scaled), the softmax runs over the
    row plus that column, and the column is then dropped: it has no value vector, so each row of the real
    pattern sums to 1 - p_sink. Returns pattern [..., H, T, T] and sink_prob [..., H, T], both from that one softmax.
    """
    *lead, T, H, D = q.shape
    K, Tk = k.shape[-2], k.shape[-3]
    scale = D ** -0.5 if scale is None else scale
    # GQA without copying keys: heads h = g * (H/K) + j share key head g, so view the H query heads as K groups
    # of H/K and multiply each group by its one key head. Scores and softmax in fp32 whatever the weights' dtype.
    qg = (q.float() * scale).movedim(-2, -3).reshape(*lead, K, (H // K) * T, D)  # [..., K, (H/K)*T, D]
    kg = k.float().movedim(-2, -3)  # [..., K, Tk, D]
    scores = (qg @ kg.transpose(-1, -2)).view(*lead, H, T, Tk)  # [..., H, T, Tk]
    mask = causal_window_mask(T, Tk, window, device=q.device)  # [T, Tk]
    scores.masked_fill_(~mask, float("-inf"))  # in place: the scores are ours alone
    sink_col = sinks.float().view(H, 1, 1).expand(*scores.shape[:-1], 1)  # [..., H, T, 1], not scaled
    # softmax subtracts each row's max, the sink column included, before exponentiating (no overflow)
    probs = torch.cat((scores, sink_col), dim=-1).softmax(-1)  # [..., H, T, T + 1]
    return probs[..., :-1], probs[..., -1]  # pattern [..., H, T, T], sink_prob [..., H, T]


def attend(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mix values: pattern [..., H, T, T] with v [..., T, K, D] (GQA: head h reads h // (H/K)) -> [..., T, H, D]."""
    *lead, H, T, Tk = pattern.shape
    K, D = v.shape[-2], v.shape[-1]
    pg = pattern.to(v.dtype).reshape(*lead, K, (H // K) * T, Tk)  # query heads grouped by their value head
    out = pg @ v.movedim(-2, -3)  # [..., K, (H/K)*T, D]
    return out.view(*lead, H, T, D).movedim(-3, -2)  # [..., T, H, D]


def swiglu_clamped(h: torch.Tensor, limit: float = 7.0, alpha: float = 1.702) -> torch.Tensor:
    """gpt-oss expert activation on interleaved gate/up rows: h [..., 2I] -> [..., I].

    Row 2j is gate_j, row 2j+1 is up_j. gate is clamped above only, up on both sides;
    out = gate * sigmoid(alpha * gate) * (up + 1).
    """
    gate = h[..., 0::2].clamp(max=limit)
    up = h[..., 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def route(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and their weights: softmax over the k chosen logits only. -> idx, weight [..., k]"""
    top_logits, idx = router_logits.topk(k, dim=-1)
    return idx, top_logits.softmax(-1)


# ---------------------------------------------------------------------------------------------------------------
# Modules. Attribute names follow the checkpoint keys (model.layers.L.self_attn.q_proj -> blocks.L.attn.q_proj)
# so loading is one loop; see checkpoints.gptoss_key.

class Attention(nn.Module):
    def __init__(self, cfg: GptOssConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        H, K, D, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.window = cfg.sliding_window if cfg.layer_types[layer] == "sliding_attention" else None
        self.q_proj = nn.Linear(d, H * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, K * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, K * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * D, d, bias=cfg.attention_bias)
        self.sinks = nn.Parameter(torch.zeros(H))  # one learned logit per head
        # hook points, in forward order
        self.hook_q = HookPoint("[T, H, D]")
        self.hook_k = HookPoint("[T, K, D]")
        self.hook_v = HookPoint("[T, K, D]")
        self.hook_q_rot = HookPoint("[T, H, D]")
        self.hook_k_rot = HookPoint("[T, K, D]")
        self.hook_pattern = HookPoint("[H, T, T]")
        self.hook_sink_prob = HookPoint("[H, T]", replaceable=False)  # the sink has no value: nothing reads it
        self.hook_out = HookPoint("[T, d]")
        self.use_kernels = True  # allow the Triton kernel where it computes the same thing (see fast_path_ok)
        self.last_path = None  # "triton" or "reference": which path the last forward took
        self._qkv = None  # (weight, bias, the projections' addresses) that q/k/v_proj are views of, after fuse_qkv

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Lay the q, k and v projections' weights (and biases) out side by side in one tensor, the parameters
        becoming views of it, so that the fast path computes all three in one matmul (two launches fewer a layer).
        The parameters, the state dict and the reference path are unchanged."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        w = torch.cat([p.weight for p in projs])
        b = torch.cat([p.bias for p in projs]) if self.cfg.attention_bias else None
        sizes = [p.out_features for p in projs]
        for p, pw in zip(projs, w.split(sizes)):
            p.weight = nn.Parameter(pw, requires_grad=p.weight.requires_grad)
        if b is not None:
            for p, pb in zip(projs, b.split(sizes)):
                p.bias = nn.Parameter(pb, requires_grad=p.bias.requires_grad)
        self._qkv = (w, b, self._qkv_addresses())

    def _qkv_addresses(self) -> tuple:
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        if self.cfg.attention_bias:
            return (q.weight.data_ptr(), k.weight.data_ptr(), v.weight.data_ptr(),
                    q.bias.data_ptr(), k.bias.data_ptr(), v.bias.data_ptr())
        return q.weight.data_ptr(), k.weight.data_ptr(), v.weight.data_ptr()

    def _fused_qkv(self):
        """(weight, bias) of the fused projection while q/k/v_proj's parameters are still the views fuse_qkv made
        (a reassigned or moved parameter ends it: their addresses are compared), else None."""
        if self._qkv is None:
            return None
        w, b, addresses = self._qkv
        if self._qkv_addresses() != addresses:
            self._qkv = None  # let the fused copy go
            return None
        return w, b

    def _apply(self, fn, recurse=True):
        self._qkv = None  # .to() / .float() / ... give the parameters new storage: project them one by one
        return super()._apply(fn, recurse)

    def fast_path_ok(self, q: torch.Tensor) -> bool:
        """The fused kernel never forms the [H, T, T] pattern, so it runs only when no hook listens to (or
        replaces) hook_pattern, and only on CUDA in half precision (fp32 loads are for exact comparisons)."""
        return (self.use_kernels and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
                and not self.hook_pattern.active and _kernels_available(q.device))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, window=None) -> torch.Tensor:
        *lead, T, _ = x.shape
        H, K, D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        fused = self._fused_qkv() if _fused_ok(self.use_kernels, x) else None
        if fused is not None:  # the same three projections in one matmul (fuse_qkv), split into views
            q, k, v = F.linear(x, *fused).split_with_sizes([H * D, K * D, K * D], -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.hook_q(q.view(*lead, T, H, D))  # [T, d] -> [T, H, D]
        k = self.hook_k(k.view(*lead, T, K, D))  # [T, d] -> [T, K, D]
        v = self.hook_v(v.view(*lead, T, K, D))
        from_kernel = None
        if _fused_ok(self.use_kernels, q):  # the same rotation, bit for bit, one launch for q and k
            fused = _kernels.fused
            if fused.rope_fused_ok(q) and fused.rope_fused_ok(k):
                from_kernel = fused.rope_fused(q, cos, sin, k)
        q_rot, k_rot = from_kernel or (apply_rope(q, cos, sin), apply_rope(k, cos, sin))
        q = self.hook_q_rot(q_rot)
        k = self.hook_k_rot(k_rot)
        window = self.window if window is None else window
        if self.fast_path_ok(q):
            want_sink = self.hook_sink_prob.active
            out, sink_prob = _kernels.attention.attention_with_sinks_fused(q, k, v, self.sinks, window,
                                                                           want_sink=want_sink)
            if want_sink:
                self.hook_sink_prob(sink_prob)  # [H, T] from the same softmax: exp(sink - logsumexp)
            self.last_path = "triton"
        else:
            pattern, sink_prob = attention_with_sinks(q, k, self.sinks, window)
            pattern = self.hook_pattern(pattern)
            self.hook_sink_prob(sink_prob)  # observed from the same softmax; the sink has no value to mix in
            out = attend(pattern, v)  # [T, H, D]
            self.last_path = "reference"
        out = out.reshape(*lead, T, H * D)  # [T, H, D] -> [T, H*D]
        return self.hook_out(self.o_proj(out))


class Router(nn.Module):
    def __init__(self, cfg: GptOssConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.num_local_experts, cfg.hidden_size))  # [E, d]
        self.bias = nn.Parameter(torch.zeros(cfg.num_local_experts))  # [E]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [T, E]


class Experts(nn.Module):
    """E SwiGLU experts. Weights are either MXFP4-packed (the Hub format: uint8 blocks + scales, dequantized one
    expert at a time when used) or dense (training, unquantized checkpoints), both in (out, in) row layout.

    Packed blocks and scales are in the checkpoint's order, or (`blocks_order == "hopper"`, after
    `use_hopper_order`, which MoE does before its first Hopper kernel call) in mxfp4.to_hopper_order and
    mxfp4.to_hopper_scales: the same bytes re-arranged in place for the sm_90 kernels. Everything that reads the
    weights goes through `dequantized` (which undoes it) or `state_dict` (which saves the checkpoint order);
    `load_state_dict` takes the checkpoint's order and keeps the module's."""

    def __init__(self, cfg: GptOssConfig, packed: bool):
        super().__init__()
        E, d, I = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
        self.packed = packed
        self.blocks_order = "checkpoint"
        self.one_multiply = False  # see note_scales
        self.descriptors = {}  # the Hopper kernels' TMA descriptors of the packed weights (moe_mxfp4_hopper)
        self.limit, self.alpha = cfg.swiglu_limit, cfg.swiglu_alpha
        if packed:
            self.register_buffer("gate_up_proj_blocks", torch.zeros(E, 2 * I, d // 32, 16, dtype=torch.uint8))
            self.register_buffer("gate_up_proj_scales", torch.zeros(E, 2 * I, d // 32, dtype=torch.uint8))
            self.register_buffer("down_proj_blocks", torch.zeros(E, d, I // 32, 16, dtype=torch.uint8))
            self.register_buffer("down_proj_scales", torch.zeros(E, d, I // 32, dtype=torch.uint8))
        else:
            self.gate_up_proj = nn.Parameter(torch.zeros(E, 2 * I, d))  # [E, 2I, d], rows interleave gate/up
            self.down_proj = nn.Parameter(torch.zeros(E, d, I))  # [E, d, I]
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * I))
        self.down_proj_bias = nn.Parameter(torch.zeros(E, d))

    def weights(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert e's (W1 [2I, d], W2 [d, I]) in `dtype`."""
        (_, w1, w2), = self.dequantized([e], dtype)
        return w1, w2

    def dequantized(self, experts: list[int], dtype: torch.dtype):
        """Yield (e, W1 [2I, d], W2 [d, I]) for the listed experts. MXFP4 weights are dequantized here and nowhere
        else, several experts per call while their dequantized copies stay under DEQUANT_CHUNK_BYTES (one at a
        time for 20b/120b, whose expert is ~50 MB in bf16), so the packed weights are never expanded at once."""
        if not self.packed:
            for e in experts:
                yield e, self.gate_up_proj[e].to(dtype), self.down_proj[e].to(dtype)
            return
        E, two_i, nb, _ = self.gate_up_proj_blocks.shape
        per_expert = (two_i * nb * 32 * 3 // 2) * torch.finfo(dtype).bits // 8  # W1 + W2 values
        step = max(1, DEQUANT_CHUNK_BYTES // per_expert)
        for i in range(0, len(experts), step):
            chunk = experts[i:i + step]
            ix = torch.tensor(chunk, device=self.gate_up_proj_blocks.device)
            b1 = self.gate_up_proj_blocks.index_select(0, ix)
            b2 = self.down_proj_blocks.index_select(0, ix)
            s1 = self.gate_up_proj_scales.index_select(0, ix)
            s2 = self.down_proj_scales.index_select(0, ix)
            if self.blocks_order == "hopper":
                b1, b2 = from_hopper_order(b1), from_hopper_order(b2)
                s1, s2 = from_hopper_scales(s1), from_hopper_scales(s2)
            w1 = mxfp4_dequant(b1, s1, dtype)  # [n, 2I, d]
            w2 = mxfp4_dequant(b2, s2, dtype)  # [n, d, I]
            yield from zip(chunk, w1, w2)

    @torch.no_grad()
    def use_hopper_order(self) -> None:
        """Re-arrange the packed blocks and scales in place into mxfp4.to_hopper_order / to_hopper_scales, a few
        experts at a time (the temporaries are ~6x the blocks converted at once, ~100 MB for 20b, not the layer's
        1.6 GB)."""
        if self.blocks_order == "hopper":
            return
        for name in _PACKED:
            _to_hopper_in_place(getattr(self, name))
        self.blocks_order = "hopper"
        self.note_scales()

    def _apply(self, fn, recurse=True):
        self.descriptors.clear()  # .to() / .cuda() / ... move the weights: the descriptors would hold the old ones
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def note_scales(self) -> None:
        """Whether the Hopper kernels may decode with one bf16 multiply a pair of weights instead of two
        (moe_hopper's `one_multiply`: one instruction fewer for every two weights decoded): only if every scale is
        at most ONE_MULTIPLY_MAX_SCALE, where both decodes give the same bits (trained checkpoints' sit near 127).
        Read here, once (one host sync), wherever the scales change: use_hopper_order and loading a state dict."""
        self.one_multiply = self.packed and all(
            int(getattr(self, n).max()) <= ONE_MULTIPLY_MAX_SCALE for n in _PACKED if n.endswith("_scales"))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed and self.blocks_order == "hopper":  # saved in the checkpoint's order, as loaded
            for name in _PACKED:
                undo = from_hopper_scales if name.endswith("_scales") else from_hopper_order
                destination[prefix + name] = undo(destination[prefix + name])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.packed and self.blocks_order == "hopper":  # state dicts hold the checkpoint's order
            for name in _PACKED:
                if prefix + name in state_dict:  # (a partial load leaves the others in the Hopper order)
                    _to_hopper_in_place(getattr(self, name))
            self.note_scales()

    def expert(self, e: int, x: torch.Tensor, w1: torch.Tensor | None = None,
               w2: torch.Tensor | None = None) -> torch.Tensor:
        """One expert on the tokens routed to it: x [N, d] -> [N, d] (weights dequantized here if not given)."""
        if w1 is None or w2 is None:
            w1, w2 = self.weights(e, x.dtype)
        h = F.linear(x, w1, self.gate_up_proj_bias[e].to(x.dtype))  # [N, 2I]
        a = swiglu_clamped(h, self.limit, self.alpha)  # [N, I]
        return F.linear(a, w2, self.down_proj_bias[e].to(x.dtype))  # [N, d]


DEQUANT_CHUNK_BYTES = 64 << 20  # most dequantized expert weight bytes held at once
ONE_MULTIPLY_MAX_SCALE = 128  # 2^(scale - 1) is a bf16 number up to here (kernels/moe.py: _decode_asm)


_PACKED = ("gate_up_proj_blocks", "down_proj_blocks", "gate_up_proj_scales", "down_proj_scales")


@torch.no_grad()
def _to_hopper_in_place(packed: torch.Tensor) -> None:
    """Blocks [E, N, nb, 16] (4 dims) or scales [E, N, nb] (3) from the checkpoint's order into the Hopper
    kernels' (mxfp4.to_hopper_order / to_hopper_scales), in place, 16 MB at a time."""
    convert = to_hopper_order if packed.dim() == 4 else to_hopper_scales
    step = max(1, (16 << 20) // packed[0].numel())
    for e in range(0, packed.shape[0], step):
        packed[e:e + step].copy_(convert(packed[e:e + step]))


class MoE(nn.Module):
    def __init__(self, cfg: GptOssConfig, packed: bool):
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.router = Router(cfg)
        self.experts = Experts(cfg, packed)
        self.hook_router_logits = HookPoint("[T, E]")
        self.hook_expert_idx = HookPoint("[T, k]")
        self.hook_expert_weight = HookPoint("[T, k]")
        self.hook_out = HookPoint("[T, d]")
        self.use_kernels = True
        self.last_path = None

    def fast_path_ok(self, x: torch.Tensor) -> bool:
        """Every MoE hook sees the same tensors on both paths (the kernel replaces only `combine`); the kernel
        reads packed MXFP4 weights and half-precision activations on CUDA."""
        return (self.use_kernels and x.is_cuda and self.experts.packed
                and x.dtype in (torch.bfloat16, torch.float16) and _kernels_available(x.device))

    def _kernel(self, x: torch.Tensor):
        """The fast-path function for x, or None for the reference: kernels/moe_hopper.py's on sm_90 with bf16
        (the blocks re-arranged for it on first use), else kernels/moe.py's (blocks in the checkpoint's order)."""
        if not self.fast_path_ok(x):
            return None
        ex = self.experts
        if _hopper_moe_ok(x.device, x.dtype, x.shape[-1], ex.gate_up_proj_bias.shape[1] // 2):
            ex.use_hopper_order()  # once: the Hopper kernels read the blocks in their own order
            return functools.partial(_kernels.moe_hopper.moe_mxfp4_hopper, one_multiply=ex.one_multiply,
                                     descriptors=ex.descriptors)
        if ex.blocks_order == "hopper":  # (e.g. fp16 activations after bf16 ones): the reference undoes the order
            return None
        from gptoss_viz.runtime.kernels.moe import moe_mxfp4

        return moe_mxfp4

    def grouping_rows(self, x: torch.Tensor) -> int | None:
        """The rows a tile of the Hopper MoE kernels holds for x [..., d] (what router_route_fused groups the
        assignments for, in its launch), or None where those kernels will not run x."""
        ex = self.experts
        E, two_i = ex.gate_up_proj_bias.shape
        if not (self.fast_path_ok(x) and _hopper_moe_ok(x.device, x.dtype, x.shape[-1], two_i // 2)):
            return None
        return _kernels.moe_hopper.schedule_rows(x.numel() // x.shape[-1] * self.k, E)

    def routing_fused_ok(self, x: torch.Tensor) -> bool:
        """Whether Block's fast path may compute this router's logits and its choice in one launch
        (fused.router_route_fused): fast path on, and no torch module hook on the router that its call would run."""
        if not _fused_ok(self.use_kernels, x):
            return False
        r = self.router
        return _kernels.fused.router_route_ok(x, r.weight, r.bias) and not (r._forward_hooks or r._forward_pre_hooks)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, norm: "RMSNorm | None" = None,
                routed: tuple | None = None):
        """x [T, d] -> the experts' weighted sum [T, d]; with `residual` [T, d], residual + that sum (the
        block's residual add, which the fast path does in the launch that sums the experts' outputs). With `norm`
        as well (the RMSNorm that follows the block): (residual + sum, norm of it), the second from that same
        launch where the fast path ran and hook_out left the sum as it was, else None. `routed`: (router logits,
        idx, weight) already computed from x (Block's fast path, fused.router_route_fused), and optionally the
        assignments' grouping for the MoE kernels (grouping_rows); they go through the same hooks; where a hook
        other than an observer (hooks.observer) listens to the logits, the experts are chosen again from what it
        leaves (it may replace them, or write them in place), in the same way, and where one listens to the
        experts' ids, the MoE kernels group what it leaves."""
        grouping = None
        if routed is not None and self.hook_router_logits.observed_only:
            logits, idx, weight = routed[:3]  # the launch that computed the logits chose the experts from them
            grouping = routed[3] if len(routed) > 3 else None
            self.hook_router_logits(logits)
        else:
            logits = self.hook_router_logits(self.router(x) if routed is None else routed[0])  # [T, E], before top-k
            if _fused_ok(self.use_kernels, logits):  # the same top-k and softmax in one launch
                from gptoss_viz.runtime.kernels.fused import route_fused

                idx, weight = route_fused(logits, self.k)
            else:
                idx, weight = route(logits, self.k)  # [T, k] each
        if grouping is not None and not self.hook_expert_idx.observed_only:
            grouping = None  # what the hook leaves is grouped anew
        idx = self.hook_expert_idx(idx)
        weight = self.hook_expert_weight(weight)
        kernel = self._kernel(x)
        total = normed = None
        if kernel is not None:
            ex = self.experts
            d = x.shape[-1]
            res = None if residual is None else residual.reshape(-1, d)
            got = kernel(x.reshape(-1, d), idx.reshape(-1, self.k), weight.reshape(-1, self.k),
                         ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                         ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                         residual=res, norm=None if res is None or norm is None else (norm.weight, norm.eps),
                         **({} if grouping is None else {"grouping": grouping}))
            if res is None:
                out = got.view_as(x)
            else:
                out, total = got[0].view_as(x), got[1].view_as(x)
                normed = got[2].view_as(x) if len(got) == 3 else None
            self.last_path = "triton"
        else:
            out = self.combine(x, idx, weight)
            self.last_path = "reference"
        hooked = self.hook_out(out)
        if residual is None:
            return hooked
        if total is None or hooked is not out:  # (a hook that replaced the output needs the add redone)
            total, normed = residual + hooked, None
        return total if norm is None else (total, normed)

    def combine(self, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """sum_j weight[t, j] * expert_{idx[t, j]}(x[t]), running each expert once on the tokens routed to it."""
        d, k = x.shape[-1], self.k
        flat_x = x.reshape(-1, d)  # [N_tok, d]
        flat_idx = idx.reshape(-1)  # [N_tok * k]: one entry per (token, slot) assignment
        order = flat_idx.argsort(stable=True)  # assignments grouped by expert
        tok = order // k  # the token of each assignment, in expert order
        w = weight.reshape(-1).index_select(0, order)  # its routing weight
        counts = torch.bincount(flat_idx, minlength=self.experts.gate_up_proj_bias.shape[0]).tolist()
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        xs = flat_x.index_select(0, tok)  # [N_tok * k, d], each expert's tokens contiguous
        ys = torch.empty_like(xs)
        for e, w1, w2 in self.experts.dequantized([e for e, c in enumerate(counts) if c], x.dtype):
            group = slice(starts[e], starts[e + 1])
            ys[group] = self.experts.expert(e, xs[group], w1, w2)
        out = torch.zeros_like(flat_x)
        out.index_add_(0, tok, (ys * w[:, None]).to(out.dtype))  # weighted sum over each token's k experts
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, cfg: GptOssConfig, layer: int, packed: bool):
        super().__init__()
        self.hook_resid_pre = HookPoint("[T, d]")
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg, packed)
        self.hook_resid_post = HookPoint("[T, d]")

    def forward(self, x, cos, sin, window=None, normed=None, next_norm=None):
        """x [T, d] -> the block's output [T, d]. The fast path's one launch summing the experts' outputs can also
        add the residual and compute the RMSNorm that follows the block: given `next_norm` (that RMSNorm), the
        block returns (output, next_norm(output)), the second None where it was not computed that way; the next
        block takes it as `normed`, its input's RMSNorm, in place of computing it (the caller passes it only while
        hook_resid_pre in between leaves x as it is)."""
        x = self.hook_resid_pre(x)
        if _fused_ok(self.attn.use_kernels, x):  # the same sums and norms, fewer launches (kernels/fused.py)
            fused = _kernels.fused
            if normed is None:
                normed = fused.rms_norm_fused(x, self.input_layernorm.weight, self.input_layernorm.eps)
            a = self.attn(normed, cos, sin, window)
            h, x = fused.rms_norm_fused(x, self.post_attention_layernorm.weight, self.post_attention_layernorm.eps, a)
            mlp = self.mlp
            routed = None
            if mlp.routing_fused_ok(h):  # the router, its choice and the MoE schedule's grouping in one launch
                routed = fused.router_route_fused(h, mlp.router.weight, mlp.router.bias, mlp.k, mlp.grouping_rows(h))
            if next_norm is not None and self.hook_resid_post.idle:
                return mlp(h, residual=x, norm=next_norm, routed=routed)
            x = self.hook_resid_post(mlp(h, residual=x, routed=routed))
            return x if next_norm is None else (x, None)
        x = x + self.attn(self.input_layernorm(x), cos, sin, window)
        x = x + self.mlp(self.post_attention_layernorm(x))
        x = self.hook_resid_post(x)
        return x if next_norm is None else (x, None)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class GptOss(HookedModel):
    """The whole model: ids [T] (or [B, T]) -> logits [T, V] (or [B, T, V])."""

    def __init__(self, cfg: GptOssConfig, packed: bool | None = None):
        super().__init__()
        self.config = cfg
        packed = cfg.quant_method == "mxfp4" if packed is None else packed
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = HookPoint("[T, d]")
        self.blocks = nn.ModuleList(Block(cfg, i, packed) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tokenizer = None  # set by load_model
        self.last_path = None  # {"attention": ..., "moe": ...}: which path each part of the last forward took
        self._rope_tables = {}  # rope(): (cos, sin) per device, variant and RoPE settings
        self.setup_hooks()

    def rope(self, T: int, device, variant: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, D/2] in fp32 for positions 0..T-1: the model's own frequencies (YaRN for gpt-oss), or
        variant="plain" for plain RoPE at the same theta with no concentration (an intervention).
        The first T rows of a table kept per device, variant and RoPE settings, computed once for a power-of-two
        length >= T (each row depends on its position only, so a row is the same whatever length it was computed
        for): no frequencies computed on the CPU and copied to the device on every forward. Read-only views."""
        if variant not in (None, "model", "plain"):
            raise ValueError(f"unknown RoPE variant {variant!r}: use 'model' or 'plain'")
        plain = variant == "plain"
        cfg = self.config
        key = (str(torch.device(device)), plain, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        table = self._rope_tables.get(key)
        if table is None or table[0].shape[0] < T:
            n = min(max(1024, 1 << (T - 1).bit_length()), max(T, cfg.max_position_embeddings))
            with torch.inference_mode(False):  # ordinary tensors, which a later forward under autograd can use
                if plain:
                    inv_freq, concentration = rope_inv_freq(cfg.head_dim, cfg.rope_theta), 1.0
                else:
                    inv_freq, concentration = inv_freq_for(cfg)
                table = rope_cos_sin(torch.arange(n, device=device), inv_freq, concentration)
            self._rope_tables[key] = table
        return table[0][:T], table[1][:T]

    def forward(self, ids: torch.Tensor, window: int | None = None, rope: str | None = None) -> torch.Tensor:
        """Per-call options for the changes no hook can express (interventions):
        `window` replaces every sliding layer's window (full layers stay full; window >= T makes every layer
        full); `rope="plain"` swaps YaRN for plain RoPE."""
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 token, got {window}")
        blocks = self.blocks
        h = None  # the next RMSNorm of x, where the block before (or the embedding's launch) computed it
        if ids.__class__ is torch.Tensor and ids.is_cuda and _embed_fused_ok(blocks, self.embed_tokens):
            # fast path: one launch embeds, takes the ids' range for the check and, where no hook sits in between,
            # the first block's input RMSNorm; the host reads the range when it next waits anyway (deferred)
            check_ids_shape(ids, self.config.max_position_embeddings)
            first = blocks[0] if self.hook_embed.idle and blocks[0].hook_resid_pre.idle else None
            norm = None if first is None else (first.input_layernorm.weight, first.input_layernorm.eps)
            x, h, id_range = _kernels.fused.embed_fused(ids, self.embed_tokens.weight, norm)
            defer_range_check(id_range, self.config.vocab_size)
        else:
            check_ids(ids, self.config.vocab_size, self.config.max_position_embeddings)
            x = self.embed_tokens(ids)
        try:
            logits = self._blocks_and_head(self.hook_embed(x), h, ids, window, rope)  # [T, d], no embedding scale
        except BaseException:
            drop_deferred_checks()
            raise
        run_deferred_checks()  # (where no hook function ran it before)
        return logits

    def _blocks_and_head(self, x: torch.Tensor, h: torch.Tensor | None, ids: torch.Tensor, window: int | None,
                         rope: str | None) -> torch.Tensor:
        """The forward from the embedding x on (h: the first block's input RMSNorm of x, or None)."""
        cos, sin = self.rope(ids.shape[-1], ids.device, rope)
        blocks = self.blocks
        for i, block in enumerate(blocks):
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            norm = self.norm if nxt is None else nxt.input_layernorm if nxt.hook_resid_pre.idle else None
            got = block(x, cos, sin, window if block.attn.window is not None else None, normed=h, next_norm=norm)
            x, h = got if norm is not None else (got, None)
        self.last_path = self._paths_taken()
        if h is not None:
            return self.lm_head(h)
        if _fused_ok(self.use_kernels, x):
            from gptoss_viz.runtime.kernels.fused import rms_norm_fused

            return self.lm_head(rms_norm_fused(x, self.norm.weight, self.norm.eps))
        return self.lm_head(self.norm(x))  # [T, V]

    @property
    def use_kernels(self) -> bool:
        """Whether the Triton fast paths may run (CUDA only; per layer, hooks that need full tensors still get
        the reference path). False forces the reference path everywhere, e.g. to compare the two."""
        return all(b.attn.use_kernels and b.mlp.use_kernels for b in self.blocks)

    @use_kernels.setter
    def use_kernels(self, on: bool) -> None:
        for b in self.blocks:
            b.attn.use_kernels = b.mlp.use_kernels = bool(on)

    def prepare_kernels(self) -> None:
        """Lay out the weights for the fast path once, as load_model does while memory is free: each layer's q/k/v
        projections side by side (Attention.fuse_qkv, for bf16 on CUDA), and the packed expert weights in the Hopper
        MoE kernels' order if those will run (bf16 weights on an sm_90 GPU) rather than in the first forward.
        The q/k/v weights it replaces are then given back to the driver rather than left cached in the allocator
        in 24 pieces (~0.7 GB for 20b): under a 15 GiB cap (a 16 GB card, benchmarks/gpu_memory_cap.py) the
        1024-token forward reserved 14.26 GiB with them cached and 13.70 without."""
        emb = self.embed_tokens.weight
        fused = False
        for b in self.blocks:
            if _fused_ok(b.attn.use_kernels, emb):
                b.attn.fuse_qkv()
                fused = True
            ex = b.mlp.experts
            if (b.mlp.use_kernels and ex.packed
                    and _hopper_moe_ok(emb.device, emb.dtype, emb.shape[1], ex.gate_up_proj_bias.shape[1] // 2)):
                ex.use_hopper_order()
        if fused:
            with torch.cuda.device(emb.device):
                torch.cuda.empty_cache()

    def _paths_taken(self) -> dict[str, str]:
        """{"attention": ..., "moe": ...}: "triton", "reference", or "mixed (triton: layers [...])"."""
        def summary(paths: list) -> str:
            if len(set(paths)) == 1:
                return paths[0]
            fast = [i for i, p in enumerate(paths) if p == "triton"]
            return f"mixed (triton: layers {fast}, reference: the rest)"
        return {"attention": summary([b.attn.last_path for b in self.blocks]),
                "moe": summary([b.mlp.last_path for b in self.blocks])}


class _KernelModules:
    """gptoss_viz.runtime.kernels' modules as attributes, each imported on first use (Triton only where the fast
    path runs) and then a plain attribute: a function-level import costs ~0.5-1 us of host time, ~7 a block."""

    def __getattr__(self, name: str):
        import importlib

        module = importlib.import_module(f"gptoss_viz.runtime.kernels.{name}")
        setattr(self, name, module)
        return module


_kernels = _KernelModules()


@functools.lru_cache(maxsize=None)
def _kernels_available(device: torch.device) -> bool:
    """Imported here, not at the top: the kernels package (and Triton) is touched only for CUDA tensors. Kept per
    device (a forward asks ~5 times a layer)."""
    from gptoss_viz.runtime.kernels import available

    return available(device)


@functools.lru_cache(maxsize=None)
def _hopper_moe_ok(device: torch.device, dtype: torch.dtype, d: int, I: int) -> bool:
    """Whether kernels/moe_hopper.py runs this MoE (bf16 on sm_90, Triton with Gluon's Hopper API, and a Triton they
    were verified on or on which they pass their self-test: kernels/verify.py). Kept per device, dtype and shape."""
    if device.type != "cuda" or not _kernels_available(device):
        return False
    try:
        from gptoss_viz.runtime.kernels import moe_hopper
    except ImportError:  # an older Triton without Gluon: moe.py's kernels
        return False
    return moe_hopper.supported(device, dtype, d, I) and moe_hopper.trusted(device)


def _fused_ok(use_kernels: bool, x: torch.Tensor) -> bool:
    """The small fused kernels (RMSNorm, RoPE) run on CUDA in bf16 (the model's dtype), kernels on."""
    return use_kernels and x.is_cuda and x.dtype == torch.bfloat16 and _kernels_available(x.device)


def _embed_fused_ok(blocks, embed: nn.Embedding) -> bool:
    """Whether the forward embeds through fused.embed_fused: the fast path on (the first block's switch, which
    use_kernels sets for all), a contiguous bf16 table on CUDA, and no torch module hook on the embedding (its call
    would run them)."""
    emb = embed.weight
    return (len(blocks) > 0 and _fused_ok(blocks[0].attn.use_kernels, emb) and emb.is_contiguous()
            and not (embed._forward_hooks or embed._forward_pre_hooks or _torch_module._global_forward_hooks
                     or _torch_module._global_forward_pre_hooks))


def defer_range_check(id_range: torch.Tensor, vocab_size: int) -> None:
    """Check the ids' range [min, max] (on the device, from fused.embed_fused) without making the host wait now: an
    asynchronous copy to the host and an event, read by a deferred check (hooks.defer_check) that raises the same
    error as check_ids before any hook function sees an activation, or as the forward returns."""
    host = id_range.to("cpu", non_blocking=True)  # (pinned by torch, on the stream of id_range's device)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(id_range.device))

    def check() -> None:
        copied.synchronize()  # (long done by the time the forward ends: the embedding is its first launch)
        lo, hi = host.tolist()
        check_range(lo, hi, vocab_size)

    defer_check(check)


def check_ids(ids: torch.Tensor, vocab_size: int, max_len: int) -> None:
    """Clear errors for inputs the model cannot run, instead of an index error deep inside."""
    check_ids_shape(ids, max_len)
    lo, hi = (int(v) for v in torch.aminmax(ids.cpu()))  # one copy to the host (one wait), a small reduction there
    check_range(lo, hi, vocab_size)


def check_range(lo: int, hi: int, vocab_size: int) -> None:
    """The error for token ids whose min is lo and max hi, if they fall outside the vocabulary."""
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InputError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")


def check_ids_shape(ids: torch.Tensor, max_len: int) -> None:
    """check_ids without the range of the values (nothing copied from the device)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"token ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() not in (1, 2):
        raise InputError(f"token ids must have shape [T] or [B, T], got {tuple(ids.shape)}")
    T = ids.shape[-1]
    if T == 0:
        raise InputError("empty input: the prompt produced no tokens")
    if T > max_len:
        raise InputError(f"sequence of {T} tokens is longer than the model's {max_len} positions")

