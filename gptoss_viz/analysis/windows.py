"""Sliding windows: which keys each layer may see, and where attention actually goes (by distance)."""

from __future__ import annotations

import numpy as np

from gptoss_viz.runtime.gptoss import causal_window_mask


def layer_window(cfg, layer: int) -> int | None:
    """The window of a layer (None = full causal attention). GPT-2 has none."""
    if cfg.model_type == "gpt_oss" and cfg.layer_types[layer] == "sliding_attention":
        return cfg.sliding_window
    return None


def mask(cfg, layer: int, T: int) -> np.ndarray:
    """[T, T] bool, the keys each query of `layer` may attend to: the model's own mask function."""
    return causal_window_mask(T, T, layer_window(cfg, layer)).numpy()


def distance_profile(trace) -> tuple[np.ndarray, np.ndarray]:
    """(bucket edges [B+1], mass [L, H, B]): mean attention mass per query at each query-key distance."""
    return trace.distance_edges, trace.distance_mass


def mass_beyond(trace, window: int = 128) -> np.ndarray:
    """[L, H] mean attention mass per query on keys `window` or more tokens back (edges include the window)."""
    edges = trace.distance_edges
    return trace.distance_mass[..., edges[:-1] >= window].sum(-1)


def expected_distance(trace) -> np.ndarray:
    """[L, H] mean distance attended to (bucket midpoints weighted by mass, over the mass that is not parked)."""
    edges = trace.distance_edges.astype(np.float64)
    mid = np.where(edges[1:] - edges[:-1] > 1, (edges[:-1] + edges[1:] - 1) / 2, edges[:-1])
    m = trace.distance_mass
    return (m * mid).sum(-1) / np.clip(m.sum(-1), 1e-12, None)
