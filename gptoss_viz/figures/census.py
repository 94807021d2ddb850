"""Census figures: routing statistics over many prompts, per label (from census.to_json's dictionary)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gptoss_viz.figures._base import CATEGORICAL, SEQUENTIAL, label, r4, style


def expert_share_figure(labels: dict, model: str) -> go.Figure:
    """Layer x expert share of routed tokens, one panel per label (at most 6), same colour scale."""
    names = [n for n in labels if "expert_share" in labels[n]][:6]
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=[f"{label(n, 40)} ({labels[n]['prompts']} prompts, "
                                                                 f"{labels[n]['tokens']} tokens)" for n in names],
                        vertical_spacing=0.08 if len(names) > 1 else 0.1)
    zmax = max(float(np.max(labels[n]["expert_share"])) for n in names)
    for i, n in enumerate(names, start=1):
        fig.add_trace(go.Heatmap(z=r4(labels[n]["expert_share"]), colorscale=SEQUENTIAL, zmin=0, zmax=zmax,
                                 showscale=i == 1, colorbar={"title": "share"},
                                 hovertemplate="layer %{y}, expert %{x}: %{z:.2%}<extra></extra>"), i, 1)
        fig.update_yaxes(title_text="layer", dtick=1, row=i, col=1)
    fig.update_xaxes(title_text="expert", row=len(names), col=1)
    return style(fig, f"{label(model)}: share of routed tokens per expert, by label", height=220 * len(names) + 120)


def per_layer_figure(labels: dict, key: str, model: str, what: str, unit: str) -> go.Figure:
    """One line per label across layers (router entropy, or sink / first-token mass averaged over heads)."""
    fig = go.Figure()
    for i, (n, d) in enumerate(labels.items()):
        if key not in d:
            continue
        v = np.asarray(d[key], dtype=np.float64)
        v = v.mean(-1) if v.ndim == 2 else v
        fig.add_scatter(x=np.arange(len(v)), y=r4(v), mode="lines+markers", name=label(n, 30),
                        line={"color": CATEGORICAL[i % len(CATEGORICAL)]},
                        hovertemplate=f"{label(n, 30)}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>")
    fig.update_xaxes(dtick=1)
    return style(fig, f"{label(model)}: {what} per layer, by label", "layer", unit, height=340)


def top_tokens_table(labels: dict, layer: int, max_experts: int = 32) -> str:
    """HTML table: the most frequent tokens of each expert in one layer, for the '(all)' label. Escaped."""
    import html

    d = labels.get("(all)") or next(iter(labels.values()))
    rows = []
    for e in range(max_experts):
        toks = d.get("top_tokens", {}).get(f"{layer}:{e}")
        if not toks:
            continue
        cells = ", ".join(f"<code>{label(t, 20)}</code>&times;{n}" for t, n in toks)
        rows.append(f"<tr><td>{e}</td><td>{cells}</td></tr>")
    return (f'<table class="archcard"><thead><tr><th>expert</th><th>most frequent tokens, layer {layer}</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>") if rows else html.escape("no routing statistics")
