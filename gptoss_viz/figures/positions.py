"""Positions: RoPE vs YaRN frequencies, a pair's rotation over positions, score by distance, GPT-2's table."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from gptoss_viz.figures._base import GPT2_COLOR, GPTOSS_COLOR, SEQUENTIAL, pool, r4, style


def frequency_figure(f: dict) -> go.Figure:
    """Rotation frequency per dimension pair, plain RoPE vs YaRN, the interpolation ramp shaded."""
    fig = go.Figure()
    fig.add_scatter(x=f["pair"], y=f["plain"], name="plain RoPE", mode="lines+markers", line={"color": GPT2_COLOR})
    if "yarn" in f:
        fig.add_scatter(x=f["pair"], y=f["yarn"], name=f"YaRN (x{f['factor']:g})", mode="lines+markers",
                        line={"color": GPTOSS_COLOR})
        fig.add_vrect(x0=f["low"], x1=f["high"], fillcolor="#DDCC77", opacity=0.3, line_width=0,
                      annotation_text=f"ramp {f['low']:.2f}-{f['high']:.2f}", annotation_position="top left")
    fig.update_yaxes(type="log")
    title = "Rotation frequency of each dimension pair"
    if "yarn" in f:
        title += f"; cos and sin scaled by {f['concentration']:.5f}"
    return style(fig, title, "pair index i (dims i and i + D/2)", "radians per token (log)")


def angle_figure(a: dict, pair: int) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=a["position"], y=r4(a["plain"]), name="plain RoPE", mode="lines", line={"color": GPT2_COLOR})
    if "yarn" in a:
        fig.add_scatter(x=a["position"], y=r4(a["yarn"]), name="YaRN", mode="lines", line={"color": GPTOSS_COLOR})
    return style(fig, f"Angle of pair {pair} at each position (wrapped to \u00b1\u03c0)", "position",
                 "angle (radians)", height=340)


def score_by_distance(d: dict, layer: int, head: int, color: str = GPTOSS_COLOR, model: str = "gpt-oss") -> go.Figure:
    fig = go.Figure(go.Scatter(x=d["distance"], y=r4(d["score"]), mode="lines", line={"color": color},
                               hovertemplate="distance %{x}: mean score %{y:.3f}<extra></extra>"))
    return style(fig, f"{model}: mean q\u00b7k/\u221aD by distance, layer {layer} head {head}", "distance (tokens)",
                 "mean attention logit", height=340)


def position_similarity(sim: np.ndarray) -> go.Figure:
    """GPT-2: cosine similarity of the learned absolute position embeddings the prompt used."""
    m, b = pool(sim)
    fig = go.Figure(go.Heatmap(z=np.round(m, 3), x0=0, dx=b, y0=0, dy=b, colorscale=SEQUENTIAL, zmin=-1, zmax=1,
                               colorbar={"title": "cosine"},
                               hovertemplate="positions %{y} & %{x}: %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    note = f" (averaged over {b}x{b} blocks)" if b > 1 else ""
    return style(fig, "GPT-2: similarity of its learned position embeddings" + note, "position", "position",
                 height=420)

