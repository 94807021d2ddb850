"""Expert routing figures (gpt-oss) and GPT-2's dense MLP activity as the contrast."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from gptoss_viz.figures._base import CATEGORICAL, SEQUENTIAL, label, r4, style, token_labels, token_ticks


def top1_grid(top1: np.ndarray, idx: np.ndarray, weight: np.ndarray, tokens: list[str]) -> go.Figure:
    """Token x layer grid coloured by each token's top-1 expert; hover lists all k experts and weights."""
    L, T = top1.shape
    E = int(max(top1.max(), idx.max())) + 1
    n = len(CATEGORICAL)
    scale = [[v, CATEGORICAL[(i // 2) % n]] for i, v in enumerate(np.repeat(np.linspace(0, 1, E + 1), 2)[1:-1])]
    k = idx.shape[-1]
    # hover reads numbers per cell (customdata) and token names from the axis: no per-cell strings
    custom = np.concatenate([idx, np.round(weight, 2)], axis=-1).astype(np.float32)  # [L, T, 2k]
    lines = "<br>".join(f"expert %{{customdata[{j}]}}: %{{customdata[{k + j}]:.2f}}" for j in range(k))
    labels = token_labels(tokens)
    fig = go.Figure(go.Heatmap(z=top1, x=labels, y=list(range(L)), customdata=custom,
                               colorscale=scale, zmin=-0.5, zmax=E - 0.5,
                               hovertemplate=f"%{{x}}<br>layer %{{y}}<br>{lines}<extra></extra>",
                               colorbar={"title": "top-1 expert"}))
    fig.update_xaxes(**token_ticks(labels, 64))
    return style(fig, "Top-1 expert of every token in every layer (colour = expert id)", "token position",
                 "layer")


def load_heatmap(load: np.ndarray, k: int) -> go.Figure:
    """[L, E] share of each layer's routed assignments that went to each expert."""
    share = r4(load / load.sum(1, keepdims=True))
    E = load.shape[1]
    fig = go.Figure(go.Heatmap(z=share, colorscale=SEQUENTIAL, zmin=0, colorbar={"title": "share"},
                               customdata=load, hovertemplate="layer %{y}, expert %{x}<br>%{customdata} routes, "
                               "%{z:.1%}<extra></extra>"))
    fig.add_annotation(text=f"even load = {1 / E:.1%}", xref="paper", yref="paper", x=1, y=1.08,
                       showarrow=False)
    return style(fig, f"Expert load per layer (each token is sent to {k} experts)", "expert", "layer")


def confidence_heatmap(margin: np.ndarray, entropy: np.ndarray, tokens: list[str]) -> go.Figure:
    """[L, T] margin between the k-th chosen and best unchosen router logit; hover adds router entropy."""
    labels = token_labels(tokens)
    fig = go.Figure(go.Heatmap(z=r4(margin), x=labels, customdata=r4(entropy), colorscale=SEQUENTIAL,
                               zmin=0, colorbar={"title": "margin"},
                               hovertemplate="layer %{y}<br>%{x}<br>margin %{z:.2f} logits<br>entropy "
                               "%{customdata:.2f}<extra></extra>"))
    fig.update_xaxes(**token_ticks(labels, 64))
    return style(fig, "Router confidence: k-th vs (k+1)-th expert logit (dark = near tie)", "token position",
                 "layer")


def token_path_sankey(path: list[list[tuple[int, float]]], token: str) -> go.Figure:
    """One token's route through the layers: nodes are (layer, expert), link width the product of weights."""
    nodes, index = [], {}
    for i, chosen in enumerate(path):
        for e, _ in chosen:
            index[(i, e)] = len(nodes)
            nodes.append(f"L{i} E{e}")
    src, dst, val = [], [], []
    for i in range(len(path) - 1):
        for e1, w1 in path[i]:
            for e2, w2 in path[i + 1]:
                src.append(index[(i, e1)])
                dst.append(index[(i + 1, e2)])
                val.append(w1 * w2)
    x = [int(n.split()[0][1:]) / max(1, len(path) - 1) * 0.98 + 0.01 for n in nodes]
    colors = [CATEGORICAL[int(n.split()[1][1:]) % len(CATEGORICAL)] for n in nodes]
    fig = go.Figure(go.Sankey(arrangement="snap", node={"label": nodes, "x": x, "color": colors, "pad": 8},
                              link={"source": src, "target": dst, "value": val}))
    return style(fig, f"Route of token \u201c{label(token)}\u201d through the layers (width = weight product)",
                 height=420)


def coactivation_heatmap(co: np.ndarray, layer: int) -> go.Figure:
    """[E, E] tokens routed to both experts (diagonal: to the expert at all) in one layer."""
    fig = go.Figure(go.Heatmap(z=co, colorscale=SEQUENTIAL, colorbar={"title": "tokens"},
                               hovertemplate="experts %{x} & %{y}: %{z} tokens<extra></extra>"))
    return style(fig, f"Experts chosen together, layer {layer}", "expert", "expert")


def mlp_activity_heatmap(active: np.ndarray, tokens: list[str]) -> go.Figure:
    """GPT-2: [L, T] share of its dense MLP's neurons with a positive pre-activation (all neurons run)."""
    labels = token_labels(tokens)
    fig = go.Figure(go.Heatmap(z=r4(active), x=labels, colorscale=SEQUENTIAL, zmin=0, zmax=1,
                               colorbar={"title": "active share"},
                               hovertemplate="layer %{y}<br>%{x}<br>%{z:.1%} of neurons > 0<extra></extra>"))
    fig.update_xaxes(**token_ticks(labels, 64))
    return style(fig, "GPT-2: every token runs the whole MLP (share of neurons active)", "token position", "layer")
