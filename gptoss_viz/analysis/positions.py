"""Positions: RoPE/YaRN frequencies and angles (from the runtime's own rope functions), the q.k score by
relative distance from a head's real q/k, and GPT-2's learned absolute position embeddings."""

from __future__ import annotations

import math

import numpy as np
import torch

from gptoss_viz.runtime.rope import rope_inv_freq, yarn_correction_range, yarn_inv_freq, yarn_ramp


def frequencies(cfg) -> dict:
    """Per dimension pair: plain RoPE and YaRN angular frequency (rad/token), wavelength, the YaRN ramp."""
    D, theta = cfg.head_dim, cfg.rope_theta
    plain = rope_inv_freq(D, theta)
    out = {"pair": np.arange(D // 2), "plain": plain.numpy(), "wavelength_plain": (2 * math.pi / plain).numpy()}
    s = cfg.rope_scaling
    if s is not None:
        yarn, conc = yarn_inv_freq(D, theta, s.factor, s.beta_fast, s.beta_slow,
                                   s.original_max_position_embeddings, s.truncate)
        low, high = yarn_correction_range(D, theta, s.factor, s.beta_fast, s.beta_slow,
                                          s.original_max_position_embeddings, s.truncate)
        out.update(yarn=yarn.numpy(), wavelength_yarn=(2 * math.pi / yarn).numpy(), ramp=yarn_ramp(D, low, high).numpy(),
                   low=low, high=high, concentration=conc, factor=s.factor,
                   original_context=s.original_max_position_embeddings)
    return out


def rotation_angle(cfg, pair: int, T: int) -> dict:
    """Angle (radians, wrapped to [-pi, pi)) pair `pair` is turned by at positions 0..T-1, plain and YaRN."""
    f = frequencies(cfg)
    pos = np.arange(T, dtype=np.float64)
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
    out = {"position": pos, "plain": wrap(pos * f["plain"][pair])}
    if "yarn" in f:
        out["yarn"] = wrap(pos * f["yarn"][pair])
    return out


def qk_by_distance(trace, layer: int, head: int, max_distance: int | None = None) -> dict:
    """Mean attention logit q_i . k_j / sqrt(D) for each distance i - j >= 0, from the head's real q and k
    (rotated, as the model scores them). Shows how the score depends on relative position."""
    q, k = trace.layer_qk(layer)
    H, K = q.shape[-2], k.shape[-2]
    kv = head // (H // K)
    with torch.no_grad():
        qh, kh = q[:, head].float(), k[:, kv].float()  # [T, D]
        scores = (qh @ kh.T) / math.sqrt(qh.shape[-1])  # [T, T]
        T = scores.shape[0]
        n = T if max_distance is None else min(T, max_distance + 1)
        means = [torch.diagonal(scores, offset=-d).mean().item() for d in range(n)]
    return {"distance": np.arange(n), "score": np.array(means)}
