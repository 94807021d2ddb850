"""Before/after figures of an intervention: next-token distribution, residual-stream change per layer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gptoss_viz.figures._base import GPT2_COLOR, GPTOSS_COLOR, SEQUENTIAL, label, r4, style, token_labels


def next_token_figure(before: list[tuple[str, float]], after: list[tuple[str, float]], kl: float,
                      after_token: str) -> go.Figure:
    """Top-10 next tokens without and with the intervention, with the KL divergence between the two."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("original", "with the intervention"), horizontal_spacing=0.2)
    for col, preds, color in ((1, before, GPT2_COLOR), (2, after, GPTOSS_COLOR)):
        fig.add_bar(x=[p for _, p in preds][::-1], y=[f"{i + 1}. {label(t)}" for i, (t, _) in enumerate(preds)][::-1],
                    orientation="h", marker_color=color, showlegend=False,
                    hovertemplate="%{y}: p = %{x:.3f}<extra></extra>", row=1, col=col)
    fig.update_xaxes(range=[0, 1], title_text="probability")
    fig.update_yaxes(type="category")  # labels such as "1. 2" must not be read as numbers
    return style(fig, f"Next token after \u201c{label(after_token, 30)}\u201d: KL(original \u2016 intervened) = "
                      f"{kl:.4f} nats", height=380)


def residual_change_figure(change: np.ndarray, tokens: list[str]) -> go.Figure:
    """[L, T] relative change of the residual stream after each layer."""
    fig = go.Figure(go.Heatmap(z=r4(change), x=token_labels(tokens), colorscale=SEQUENTIAL, zmin=0,
                               colorbar={"title": "relative change"},
                               hovertemplate="layer %{y}<br>%{x}<br>|\u0394resid| / |resid| = %{z:.4f}<extra></extra>"))
    fig.update_xaxes(showticklabels=len(tokens) <= 64)
    return style(fig, "How far the residual stream moved after each layer", "token position", "layer")
