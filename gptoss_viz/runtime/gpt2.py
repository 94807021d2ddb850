"""GPT-2 (Radford et al. 2019) in plain PyTorch, with the same hook naming scheme as the gpt-oss model.

Pre-LayerNorm blocks; learned absolute position embeddings added to token embeddings; multi-head causal
attention (no sinks, no window, no rotation); dense GELU (tanh approximation) MLP of width 4d; lm_head tied to
the token embedding. Checkpoint weights use the Conv1D layout [in, out]: y = x @ W + b.

Dimension letters: T tokens, d = n_embd, H heads, D head dim, F MLP width (4d), V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptoss_viz.runtime.configs import GPT2Config
from gptoss_viz.runtime.gptoss import causal_window_mask, check_ids
from gptoss_viz.runtime.hooks import HookedModel, HookPoint


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def causal_attention(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain causal softmax attention probabilities: q, k [..., T, H, D] -> pattern [..., H, T, T] (rows sum to 1)."""
    T, D = q.shape[-3], q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    scores = torch.einsum("...qhd,...khd->...hqk", q, k) * scale  # [..., H, T, T]
    scores = scores.masked_fill(~causal_window_mask(T, k.shape[-3], None, device=q.device), float("-inf"))
    return scores.softmax(-1)


class Conv1D(nn.Module):
    """GPT-2's linear layer with the weight stored [in, out]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.c_attn = Conv1D(d, 3 * d)  # columns q | k | v
        self.c_proj = Conv1D(d, d)
        self.attn_dropout = nn.Dropout(cfg.attn_pdrop)  # training only
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)
        self.hook_q = HookPoint("[T, H, D]")
        self.hook_k = HookPoint("[T, H, D]")
        self.hook_v = HookPoint("[T, H, D]")
        self.hook_pattern = HookPoint("[H, T, T]")
        self.hook_out = HookPoint("[T, d]")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, T, d = x.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.c_attn(x).split(d, dim=-1)  # [T, 3d] -> 3 x [T, d]
        q = self.hook_q(q.view(*lead, T, H, D))  # [T, d] -> [T, H, D]
        k = self.hook_k(k.view(*lead, T, H, D))
        v = self.hook_v(v.view(*lead, T, H, D))
        pattern = self.hook_pattern(causal_attention(q, k))  # [H, T, T]
        out = torch.einsum("...hqk,...khd->...qhd", self.attn_dropout(pattern), v)  # [T, H, D]
        out = self.c_proj(out.reshape(*lead, T, d))  # [T, H, D] -> [T, d]
        return self.hook_out(self.resid_dropout(out))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, cfg.inner_size)
        self.c_proj = Conv1D(cfg.inner_size, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.resid_pdrop)
        self.hook_pre = HookPoint("[T, F]")
        self.hook_post = HookPoint("[T, F]")
        self.hook_out = HookPoint("[T, d]")

    def forward(self, x):
        h = self.hook_pre(self.c_fc(x))  # [T, F]
        a = self.hook_post(gelu_tanh(h))
        return self.hook_out(self.dropout(self.c_proj(a)))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.hook_resid_pre = HookPoint("[T, d]")
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.hook_resid_post = HookPoint("[T, d]")

    def forward(self, x):
        x = self.hook_resid_pre(x)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return self.hook_resid_post(x)


class GPT2(HookedModel):
    """ids [T] (or [B, T]) -> logits [T, V] (or [B, T, V])."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.hook_embed = HookPoint("[T, d]")
        self.hook_pos_embed = HookPoint("[T, d]")
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.tokenizer = None  # set by load_model
        self.setup_hooks()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_ids(ids, self.config.vocab_size, self.config.n_positions)
        T = ids.shape[-1]
        tok = self.hook_embed(self.wte(ids))  # [T, d]
        pos = self.hook_pos_embed(self.wpe(torch.arange(T, device=ids.device)))  # [T, d]
        x = self.drop(tok + pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied head: [T, d] @ [V, d]^T -> [T, V]
