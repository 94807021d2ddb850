"""Sliding windows: the masks, a head's real pattern with the window edge, and attention by distance."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gptoss_viz.figures._base import MASK, SEQUENTIAL, pool, r4, style, token_labels, token_ticks


def masks_figure(sliding: np.ndarray, full: np.ndarray, window: int) -> go.Figure:
    """The keys a query may see on a sliding layer and on a full layer, side by side."""
    a, b = pool(sliding.astype(np.float64), 128)
    f, _ = pool(full.astype(np.float64), 128)
    a, f = np.round(a, 2).astype(np.float32), np.round(f, 2).astype(np.float32)  # base64 float32: half the bytes
    note = f" (averaged over {b}x{b} token blocks)" if b > 1 else ""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"sliding layer: last {window} tokens", "full layer"))
    for col, m in ((1, a), (2, f)):
        fig.add_trace(go.Heatmap(z=m, x0=0, dx=b, y0=0, dy=b, colorscale=MASK, zmin=0, zmax=1, showscale=False,
                                 hovertemplate="query %{y}, key %{x}: %{z:.0%} visible<extra></extra>"), 1, col)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="key position")
    fig.update_yaxes(title_text="query position", col=1)
    return style(fig, "Which keys each query may attend to" + note, height=400)


def pattern_figure(pattern: np.ndarray, tokens: list[str], title: str, window: int | None) -> go.Figure:
    """One head's attention pattern [T, T]; on sliding layers the window's edge is drawn."""
    T = pattern.shape[0]
    m, b = pool(pattern)
    if b == 1:  # token names on the axes (unique: they carry the index) give the hover without per-cell text
        labels = token_labels(tokens)
        fig = go.Figure(go.Heatmap(z=r4(m), x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0,
                                   colorbar={"title": "attention"},
                                   hovertemplate="%{y} \u2192 %{x}<br>%{z:.3f}<extra></extra>"))
        fig.update_xaxes(**token_ticks(labels, 48))
        fig.update_yaxes(**token_ticks(labels, 48))
    else:
        fig = go.Figure(go.Heatmap(z=r4(m), x0=0, dx=b, y0=0, dy=b, colorscale=SEQUENTIAL, zmin=0,
                                   colorbar={"title": "attention"},
                                   hovertemplate="queries ~%{y}, keys ~%{x}: mean %{z:.4f}<extra></extra>"))
    if window is not None and T > window:
        # the first key out of reach: key = query - window (categorical axes count cells, so does this)
        fig.add_shape(type="line", x0=-0.5, y0=window - 0.5, x1=T - window - 0.5, y1=T - 0.5,
                      line={"color": "#CC3311", "dash": "dash"})
        fig.add_annotation(x=(T - window) / 2, y=window + (T - window) / 2, text=f"window edge ({window})",
                           showarrow=False, font={"color": "#CC3311"}, textangle=45)
    fig.update_yaxes(autorange="reversed")
    note = f" (averaged over {b}x{b} blocks)" if b > 1 else ""
    return style(fig, title + note, "key position", "query position", height=460)


def distance_heatmap(edges: np.ndarray, mass: np.ndarray, window: int, title: str) -> go.Figure:
    """[L, B] mean attention mass per query by distance bucket (averaged over heads)."""
    names = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])]
    z = r4(mass.mean(1))  # [L, B]
    fig = go.Figure(go.Heatmap(z=z, x=names, colorscale=SEQUENTIAL, zmin=0, colorbar={"title": "mass"},
                               hovertemplate="layer %{y}, distance %{x}: %{z:.3f}<extra></extra>"))
    beyond = [n for n, a in zip(names, edges[:-1]) if a >= window]
    if beyond:
        fig.add_vrect(x0=names.index(beyond[0]) - 0.5, x1=len(names) - 0.5, line_width=2, line_color="#CC3311",
                      fillcolor="rgba(0,0,0,0)", annotation_text=f"\u2265 {window} back",
                      # above the box, in its colour: inside it the text sat dark on dark and ran into the colour bar
                      annotation_position="outside top right", annotation_font={"color": "#CC3311"})
    return style(fig, title, "distance back (tokens)", "layer", height=360)


def beyond_heatmap(beyond: np.ndarray, title: str, layer_types: list[str] | None = None,
                   note: str | None = None) -> go.Figure:
    """[L, H] attention mass on keys at least a window back (zero on sliding layers by construction). `note` is
    written over the map, e.g. why it is all zero (a prompt shorter than the window)."""
    y = [f"{i} ({t.split('_')[0]})" for i, t in enumerate(layer_types)] if layer_types else list(range(len(beyond)))
    fig = go.Figure(go.Heatmap(z=r4(beyond), y=y, colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar={"title": "mass"},
                               hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>"))
    if note:
        fig.add_annotation(text=html.escape(note), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font={"color": "white", "size": 13})
    return style(fig, title, "head", "layer", height=340)
