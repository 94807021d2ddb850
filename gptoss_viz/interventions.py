"""Live interventions on gpt-oss, through the runtime's public API only: temporary hooks that return a
replacement tensor, and the forward pass's documented per-call options for what no hook can express.

    ablate an expert       hook_router_logits: its logit -> -inf, so top-k picks the next-best expert
    force experts          hook_expert_idx / hook_expert_weight of one token: the chosen experts, weighted by the
                           softmax of their own router logits (as if the router had picked them)
    remove sinks           hook_pattern: rows renormalised over the real keys, which is exactly the softmax
                           without the sink column (p_j / sum_j p_j = p_j / (1 - p_sink))
    change the window      forward(window=W) on sliding layers; W >= T makes every layer full
    plain RoPE for YaRN    forward(rope="plain")

An Intervention is a frozen value with a compact text form, so share links carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gptoss_viz.errors import InputError

Target = int | None  # a layer or head index, or None for all of them


@dataclass(frozen=True)
class Intervention:
    ablate: tuple[tuple[Target, int], ...] = ()  # (layer or all, expert)
    force: tuple[int, Target, tuple[int, ...]] | None = None  # (token position, layer or all, experts)
    remove_sinks: tuple[tuple[Target, Target], ...] = ()  # (layer or all, head or all)
    window: int | None = None  # new sliding window (tokens)
    all_full: bool = False  # every layer attends to the full prefix
    plain_rope: bool = False  # plain RoPE instead of YaRN

    # -- what it does -------------------------------------------------------------------------------------------
    def is_noop(self) -> bool:
        return self == Intervention()

    def target_view(self) -> str:
        """The tab that shows this intervention's direct effect."""
        if self.ablate or self.force:
            return "routing"
        if self.remove_sinks:
            return "sinks"
        if self.window is not None or self.all_full:
            return "window"
        if self.plain_rope:
            return "rope"
        return "overview"

    def describe(self) -> str:
        parts = []
        for layer, e in self.ablate:
            parts.append(f"expert {e} ablated in {_where(layer, 'layer')}")
        if self.force:
            t, layer, experts = self.force
            parts.append(f"token {t} forced onto experts {', '.join(map(str, experts))} in {_where(layer, 'layer')}")
        for layer, head in self.remove_sinks:
            parts.append(f"sink removed from {_where(head, 'head')} of {_where(layer, 'layer')}")
        if self.all_full:
            parts.append("every layer attends to the full prefix")
        elif self.window is not None:
            parts.append(f"sliding window {self.window} tokens")
        if self.plain_rope:
            parts.append("plain RoPE instead of YaRN")
        return "; ".join(parts) or "no intervention"

    def validate(self, cfg, T: int) -> None:
        """Clear errors for indices the model does not have."""
        L, E, H = cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_attention_heads
        k = cfg.num_experts_per_tok
        for layer, e in self.ablate:
            _check(layer, L, "layer")
            _check(e, E, "expert")
        if self.force:
            t, layer, experts = self.force
            _check(t if t >= 0 else t + T, T, "token")
            _check(layer, L, "layer")
            if len(experts) != k or len(set(experts)) != k:
                raise InputError(f"force exactly {k} different experts (the model routes each token to {k})")
            for e in experts:
                _check(e, E, "expert")
        for layer, head in self.remove_sinks:
            _check(layer, L, "layer")
            _check(head, H, "head")
        if self.window is not None and not 1 <= self.window <= 1_000_000:
            raise InputError(f"window must be between 1 and 1,000,000 tokens, got {self.window}")

    # -- how: hooks and forward options -----------------------------------------------------------------------
    def hooks(self, model, T: int) -> list:
        """(hook name, fn) pairs that implement it; fns return replacement tensors."""
        cfg = model.config
        L = cfg.num_hidden_layers
        out = []
        for layer, e in self.ablate:
            for i in _layers(layer, L):
                out.append((f"blocks.{i}.mlp.hook_router_logits", _ablate(e)))
        if self.force:
            t, layer, experts = self.force
            t = t % T
            for i in _layers(layer, L):
                logits: dict = {}
                out.append((f"blocks.{i}.mlp.hook_router_logits", _remember(logits)))
                out.append((f"blocks.{i}.mlp.hook_expert_idx", _force_idx(t, experts)))
                out.append((f"blocks.{i}.mlp.hook_expert_weight", _force_weight(t, experts, logits)))
        by_layer: dict[int, set] = {}
        for layer, head in self.remove_sinks:
            for i in _layers(layer, L):
                by_layer.setdefault(i, set()).update(range(cfg.num_attention_heads) if head is None else [head])
        for i, heads in sorted(by_layer.items()):
            out.append((f"blocks.{i}.attn.hook_pattern", _no_sink(sorted(heads))))
        return out

    def sinkless(self, cfg) -> set[tuple[int, int]]:
        """(layer, head) pairs whose sink is removed: their sink probability is 0 by construction."""
        return {(i, h) for layer, head in self.remove_sinks for i in _layers(layer, cfg.num_hidden_layers)
                for h in (range(cfg.num_attention_heads) if head is None else [head])}

    def forward_kwargs(self, T: int) -> dict:
        kw = {}
        if self.all_full:
            kw["window"] = max(T, 1)  # a window as long as the text: every key visible
        elif self.window is not None:
            kw["window"] = self.window
        if self.plain_rope:
            kw["rope"] = "plain"
        return kw

    # -- share-link form --------------------------------------------------------------------------------------
    def to_str(self) -> str:
        """e.g. 'ax=1:5,*:2;fx=12:*:1.2.3.4;rs=1:*;w=256;full;rope=plain' ('*' = all)."""
        s = lambda v: "*" if v is None else str(v)  # noqa: E731
        parts = []
        if self.ablate:
            parts.append("ax=" + ",".join(f"{s(layer)}:{e}" for layer, e in self.ablate))
        if self.force:
            t, layer, experts = self.force
            parts.append(f"fx={t}:{s(layer)}:{'.'.join(map(str, experts))}")
        if self.remove_sinks:
            parts.append("rs=" + ",".join(f"{s(layer)}:{s(h)}" for layer, h in self.remove_sinks))
        if self.window is not None:
            parts.append(f"w={self.window}")
        if self.all_full:
            parts.append("full")
        if self.plain_rope:
            parts.append("rope=plain")
        return ";".join(parts)

    @classmethod
    def from_str(cls, text: str) -> "Intervention":
        """Parse `to_str`'s form; anything malformed raises InputError naming the part."""
        kw: dict = {}
        if not text:
            return cls()
        if len(text) > 2000:
            raise InputError("intervention text is too long")
        for part in text.split(";"):
            key, _, val = part.partition("=")
            try:
                if key == "ax":
                    kw["ablate"] = tuple((_t(a), int(b)) for a, b in (p.split(":") for p in val.split(",")))
                elif key == "fx":
                    t, layer, experts = val.split(":")
                    kw["force"] = (int(t), _t(layer), tuple(int(e) for e in experts.split(".")))
                elif key == "rs":
                    kw["remove_sinks"] = tuple((_t(a), _t(b)) for a, b in (p.split(":") for p in val.split(",")))
                elif key == "w":
                    kw["window"] = int(val)
                elif key == "full" and not val:
                    kw["all_full"] = True
                elif key == "rope" and val == "plain":
                    kw["plain_rope"] = True
                else:
                    raise ValueError
            except ValueError:
                raise InputError(f"cannot read intervention part {part[:40]!r}") from None
        return cls(**kw)


def _t(s: str) -> Target:
    return None if s == "*" else int(s)


def _where(v: Target, what: str) -> str:
    return f"every {what}" if v is None else f"{what} {v}"


def _check(v: Target, n: int, what: str) -> None:
    if v is not None and not 0 <= v < n:
        raise InputError(f"{what} {v} does not exist (0..{n - 1})")


def _layers(layer: Target, L: int) -> list[int]:
    return list(range(L)) if layer is None else [layer]


def _ablate(e: int):
    def fn(logits, hook):
        out = logits.clone()
        out[..., e] = float("-inf")
        return out
    return fn


def _remember(store: dict):
    def fn(logits, hook):
        store["logits"] = logits
    return fn


def _force_idx(t: int, experts):
    def fn(idx, hook):
        out = idx.clone()
        out[..., t, :] = torch.tensor(experts, dtype=idx.dtype, device=idx.device)
        return out
    return fn


def _force_weight(t: int, experts, store: dict):
    def fn(w, hook):
        out = w.clone()
        chosen = store["logits"][..., t, list(experts)]  # the forced experts' own router logits
        out[..., t, :] = chosen.softmax(-1).to(w.dtype)
        return out
    return fn


def _no_sink(heads: list[int]):
    def fn(pattern, hook):
        out = pattern.clone()
        sel = out[..., heads, :, :]
        out[..., heads, :, :] = sel / sel.sum(-1, keepdim=True).clamp_min(torch.finfo(sel.dtype).tiny)
        return out
    return fn


# ---------------------------------------------------------------------------------------------------------------
# Before / after

@dataclass
class Comparison:
    position: int
    before: list[tuple[str, float]]  # top-10 next tokens without the intervention
    after: list[tuple[str, float]]  # and with it
    kl: float  # KL(before || after) of the next-token distributions at `position`, nats
    resid_change: np.ndarray  # [L, T] |resid_after - resid_before| / |resid_before| after each layer
    max_logit_diff: float  # over every position: 0 for a no-op
    description: str = ""
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def compare(model, ids: torch.Tensor, iv: Intervention, position: int = -1) -> Comparison:
    """Run the model without and with the intervention and measure what changed."""
    T = ids.shape[-1]
    iv.validate(model.config, T)
    L = len(model.blocks)
    names = [f"blocks.{i}.hook_resid_post" for i in range(L)]
    base_logits, base = model.run_with_cache(ids, names_filter=names)
    captured: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        captured[hook.name] = x.detach()

    with model.hooks(iv.hooks(model, T) + [(n, grab) for n in names]):
        new_logits = model(ids, **iv.forward_kwargs(T))
    p = position % T
    lp_before = base_logits[p].float().log_softmax(-1)
    lp_after = new_logits[p].float().log_softmax(-1)
    kl = float((lp_before.exp() * (lp_before - lp_after)).sum())
    change = torch.stack([(captured[n].float() - base[n].float()).norm(dim=-1) /
                          base[n].float().norm(dim=-1).clamp_min(1e-12) for n in names])  # [L, T]
    tok = model.tokenizer

    def top(lp):
        v, i = lp.exp().topk(10)
        return [(tok.decode([int(j)]), float(x)) for x, j in zip(v, i)]

    return Comparison(p, top(lp_before), top(lp_after), max(kl, 0.0), change.cpu().numpy(),
                      float((new_logits.float() - base_logits.float()).abs().max()), iv.describe())
