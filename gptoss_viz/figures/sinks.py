"""Attention sinks: learned (gpt-oss) vs emergent on the first token (GPT-2), on one colour scale."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from gptoss_viz.figures._base import DIVERGING, GPTOSS_COLOR, SEQUENTIAL, r4, style, token_labels


def mass_heatmap(mass: np.ndarray, title: str, what: str) -> go.Figure:
    """[L, H] parked attention mass, fixed 0..1 scale so gpt-oss and GPT-2 panels compare directly."""
    fig = go.Figure(go.Heatmap(z=r4(mass), colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar={"title": "mass"},
                               hovertemplate=f"layer %{{y}}, head %{{x}}<br>{what}: %{{z:.3f}}<extra></extra>"))
    return style(fig, title, "head", "layer", height=360)


def per_token_line(sink: np.ndarray, tokens: list[str], layer: int, head: int) -> go.Figure:
    """Sink probability of each query position for one head."""
    fig = go.Figure(go.Scatter(x=np.arange(len(sink)), y=r4(sink), mode="lines+markers", marker={"size": 4},
                               line={"color": GPTOSS_COLOR}, text=token_labels(tokens),
                               hovertemplate="%{text}<br>sink %{y:.3f}<extra></extra>"))
    fig.update_yaxes(range=[0, 1])
    return style(fig, f"Sink probability per token, layer {layer} head {head}", "query position",
                 "probability on the sink", height=320)


def learned_logits(sinks: np.ndarray) -> go.Figure:
    """[L, H] the learned sink logits (compare with typical attention scores of a few units)."""
    lim = float(np.abs(sinks).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=r4(sinks), colorscale=DIVERGING, zmid=0, zmin=-lim, zmax=lim,
                               colorbar={"title": "logit"},
                               hovertemplate="layer %{y}, head %{x}<br>sink logit %{z:.2f}<extra></extra>"))
    return style(fig, "Learned sink logit of every head", "head", "layer", height=340)

