"""Rotary position embeddings (RoPE, arXiv 2104.09864) with YaRN context extension (arXiv 2309.00071).

Pure functions, used by the gpt-oss model and by the RoPE views, so a view shows exactly what the model computes.

gpt-oss rotates half-split pairs: dimension i is paired with i + D/2 (not adjacent dimensions). Pair i turns by
angle `position * inv_freq[i]`. Plain RoPE: inv_freq[i] = theta^(-2i/D). YaRN keeps the fast pairs (those that
rotate many times within the original context) and interpolates the slow ones by 1/factor, with a linear ramp
between, and scales cos and sin by a "concentration" 0.1 ln(factor) + 1 that sharpens attention logits.
"""

from __future__ import annotations

import math

import torch


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Plain RoPE angular frequency (radians per position) of each of the D/2 pairs, fp32 [D/2]."""
    return 1.0 / rope_base_freq(head_dim, theta)


def rope_base_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(2i/D) per pair, in fp32 as both reference implementations compute it. [D/2]"""
    return theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def yarn_correction_range(head_dim: int, theta: float, factor: float, beta_fast: float, beta_slow: float,
                          original_max_position_embeddings: int, truncate: bool = False) -> tuple[float, float]:
    """Pair indices (low, high) where the YaRN ramp starts and ends.

    The pair that rotates exactly `beta` full turns over the original context has index
    D * ln(L / (beta * 2 pi)) / (2 ln theta). Pairs below `low` (fast) keep their frequency; pairs above `high`
    (slow) are interpolated by 1/factor. With truncate=False (gpt-oss) the boundaries are not rounded.
    """
    del factor  # the boundaries depend only on the rotation counts, not on the extension factor

    def pair_index(n_rot: float) -> float:
        return head_dim * math.log(original_max_position_embeddings / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0.0), min(high, head_dim - 1.0)


def yarn_ramp(head_dim: int, low: float, high: float) -> torch.Tensor:
    """r_i in [0, 1] per pair: 0 = keep the original frequency (extrapolate), 1 = fully interpolate. fp32 [D/2]."""
    if high == low:
        high += 0.001  # avoid a division by zero for degenerate configs
    i = torch.arange(head_dim // 2, dtype=torch.float32)
    return ((i - low) / (high - low)).clamp(0, 1)


def yarn_concentration(factor: float) -> float:
    """YaRN attention scaling ("mscale"), applied to both cos and sin: 0.1 ln(s) + 1 (1.34657 for s = 32)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_inv_freq(head_dim: int, theta: float, factor: float, beta_fast: float, beta_slow: float,
                  original_max_position_embeddings: int, truncate: bool = False) -> tuple[torch.Tensor, float]:
    """YaRN frequencies [D/2] (fp32) and the concentration that multiplies cos and sin."""
    freq = rope_base_freq(head_dim, theta)
    low, high = yarn_correction_range(head_dim, theta, factor, beta_fast, beta_slow,
                                      original_max_position_embeddings, truncate)
    r = yarn_ramp(head_dim, low, high)
    inv_freq = (1 - r) / freq + r / (factor * freq)
    return inv_freq, yarn_concentration(factor)


def inv_freq_for(config) -> tuple[torch.Tensor, float]:
    """The model's own frequencies and concentration: YaRN if the config asks for it, else plain RoPE."""
    s = config.rope_scaling
    if s is None:
        return rope_inv_freq(config.head_dim, config.rope_theta), 1.0
    return yarn_inv_freq(config.head_dim, config.rope_theta, s.factor, s.beta_fast, s.beta_slow,
                         s.original_max_position_embeddings, s.truncate)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, concentration: float = 1.0):
    """cos and sin of each pair's angle at each position, fp32 [T, D/2], both scaled by the concentration."""
    angles = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]
    return angles.cos() * concentration, angles.sin() * concentration


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate half-split pairs (x_i, x_{i+D/2}) of x [..., T, heads, D] by the angles in cos/sin [T, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)  # [..., T, heads, D/2] each
    c = cos[:, None, :].to(x.dtype)  # [T, 1, D/2]: the same angle for every head
    s = sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
