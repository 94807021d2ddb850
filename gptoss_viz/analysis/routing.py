"""Expert routing of a gpt-oss Trace: which experts each token goes to, how sure the router is, and which
experts work together; GPT-2's dense MLP activity as the contrast."""

from __future__ import annotations

import numpy as np


def top1(trace) -> np.ndarray:
    """[L, T] the highest-weighted expert of each token in each layer (top-k comes sorted by logit)."""
    return trace.expert_idx[..., 0].astype(np.int64)


def expert_load(trace) -> np.ndarray:
    """[L, E] how many (token, slot) assignments each expert received; each row sums to T * k."""
    L, E = trace.router_logits.shape[0], trace.router_logits.shape[-1]
    return np.stack([np.bincount(trace.expert_idx[i].ravel(), minlength=E) for i in range(L)])


def router_entropy(trace) -> np.ndarray:
    """[L, T] entropy of the router's softmax over all E experts, divided by log E (1 = undecided)."""
    z = trace.router_logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1) / np.log(z.shape[-1])


def topk_margin(trace) -> np.ndarray:
    """[L, T] logit of the k-th chosen expert minus the best unchosen one: how close the token came to another
    route (small = a coin flip)."""
    k = trace.expert_idx.shape[-1]
    s = -np.sort(-trace.router_logits, axis=-1)
    return s[..., k - 1] - s[..., k]


def coactivation(trace, layer: int) -> np.ndarray:
    """[E, E] number of tokens routed to both experts i and j in `layer` (diagonal: tokens routed to i)."""
    E = trace.router_logits.shape[-1]
    onehot = np.zeros((trace.T, E), dtype=np.int64)
    np.put_along_axis(onehot, trace.expert_idx[layer].astype(np.int64), 1, axis=-1)
    return onehot.T @ onehot


def token_path(trace, t: int) -> list[list[tuple[int, float]]]:
    """For token t, per layer, the chosen experts and their weights."""
    return [[(int(e), float(w)) for e, w in zip(trace.expert_idx[i, t], trace.expert_weight[i, t])]
            for i in range(trace.expert_idx.shape[0])]


def mlp_activity(trace) -> np.ndarray:
    """GPT-2 contrast: [L, T] share of its dense MLP's neurons that are active (positive pre-activation)."""
    return trace.mlp_active
