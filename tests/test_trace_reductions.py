"""The Trace's pattern statistics computed from rotated q/k a block of queries at a time (pattern_reductions,
which lets the GPU forward keep its fused attention kernel) equal the same statistics reduced from the whole
[H, T, T] pattern, for full and sliding layers and lengths around the block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gptoss_viz.trace as trace
from gptoss_viz.runtime.gptoss import attention_with_sinks


@pytest.mark.parametrize("T,H,K,window", [(1, 4, 2, None), (2, 4, 2, 8), (37, 4, 2, None), (300, 8, 2, 128),
                                          (300, 8, 2, None), (700, 4, 1, 16)])
def test_pattern_reductions_equal_whole_pattern(T, H, K, window, monkeypatch):
    g = torch.Generator().manual_seed(T)
    q, k = torch.randn(T, H, 16, generator=g), torch.randn(T, K, 16, generator=g)
    sinks = torch.randn(H, generator=g)
    edges = trace.distance_edges(T, 128)
    monkeypatch.setattr(trace, "PATTERN_CHUNK_BYTES", 4 * H * T * 16)  # blocks of 16 queries
    first, dist = trace.pattern_reductions(q, k, sinks, window, edges)
    p, _ = attention_with_sinks(q, k, sinks, window)  # [H, T, T]
    B = len(edges) - 1
    first_ref = p[:, 1:, 0].mean(-1) if T > 1 else torch.zeros(H)
    mass = torch.zeros(H, B + 1).scatter_add_(1, bucket_index(T, edges).expand(H, -1), p.reshape(H, -1))
    first_map, dist_map = trace.pattern_map_reductions(p, edges)  # the path for GPT-2 and replaced patterns
    for name, a, b in (("first_token_mass", first, first_ref), ("distance_mass", dist, mass[:, :B] / T),
                       ("first_token_mass from the map", first_map, first_ref),
                       ("distance_mass from the map", dist_map, mass[:, :B] / T)):
        worst = (a - b).abs().max().item()
        assert worst < 1e-5, f"{name} T={T} window={window}: differs from the whole pattern's by {worst:.3g}"


def bucket_index(T: int, edges: np.ndarray) -> torch.Tensor:
    """[1, T*T] int64: the distance bucket of each (query, key) pair by bucketize, len(edges)-1 for future keys."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    dist = q - k  # [T, T]
    idx = torch.bucketize(dist, torch.as_tensor(edges[1:-1]), right=True)  # edges[b] <= dist < edges[b+1] -> b
    idx = torch.where(dist < 0, torch.full_like(idx, len(edges) - 1), idx)
    return idx.reshape(1, T * T)
