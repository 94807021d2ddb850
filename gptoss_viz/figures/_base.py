"""Shared look of every figure: one theme, colour-blind-safe palettes, safe token labels, size limits."""

from __future__ import annotations

import functools
import html

import numpy as np
import plotly.graph_objects as go

# Colour-blind-safe palettes: viridis (sequential), cividis for masks, purple-orange (diverging), and
# Paul Tol's "muted" + "bright" qualitative sets for categories (experts), repeated with a marker for ids.
SEQUENTIAL = "Viridis"
MASK = [[0.0, "#f7f7f7"], [1.0, "#2c5f8a"]]
DIVERGING = "PuOr"
GPTOSS_COLOR, GPT2_COLOR = "#CC6677", "#332288"  # Tol muted: rose for gpt-oss, indigo for GPT-2
CATEGORICAL = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
               "#AA4499", "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB"]
FONT = "Inter, Helvetica, Arial, sans-serif"
MAX_SIDE = 256  # a heatmap side longer than this is averaged over blocks (and the title says so)


def label(token: str, limit: int = 24) -> str:
    """A token as plain text for plotly labels: whitespace made visible, HTML escaped (never rendered)."""
    s = token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)
    if s.strip() == "":
        s = s.replace(" ", "\u2423")  # visible space
    elif s.startswith(" "):  # a token's leading space (" cat") is part of it: make it visible
        n = len(s) - len(s.lstrip(" "))
        s = "\u2423" * n + s[n:]
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return html.escape(s, quote=False)


def token_labels(tokens: list[str]) -> list[str]:
    return [f"{i}: {label(t)}" for i, t in enumerate(tokens)]


def token_ticks(labels: list[str], named_up_to: int) -> dict:
    """Axis settings for a categorical axis of token labels: the token names when there are few, else every
    n-th position as a plain number (hiding the names alone would leave a row of unlabelled tick marks)."""
    T = len(labels)
    if T <= named_up_to:
        return {"showticklabels": True}
    step = next(s for s in (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**9) if T / s <= 10)
    idx = range(0, T, step)
    return {"tickmode": "array", "tickvals": [labels[i] for i in idx], "ticktext": [str(i) for i in idx],
            "tickangle": 0}


def style(fig: go.Figure, title: str, x: str = "", y: str = "", height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        template=_theme(), font={"family": FONT, "size": 12}, height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 50}, hoverlabel={"font": {"family": "monospace"}},
    )
    fig.update_xaxes(title_text=x, automargin=True)
    fig.update_yaxes(title_text=y, automargin=True)
    if y == "layer":  # whole layers only
        fig.update_yaxes(dtick=1)
    return fig


def r4(a) -> np.ndarray:
    """Values rounded to 4 decimals, as float32: plotly sends arrays base64-encoded in their own dtype, so float32
    halves what the browser downloads and parses (a 256 x 256 attention map: 893 kB as float64, 442 kB)."""
    return np.round(np.asarray(a, dtype=np.float64), 4).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _theme() -> go.layout.Template:
    """The project's one theme: light axes and grid, the categorical palette. Small on purpose: plotly copies
    a figure's template, and the stock ones carry defaults for every trace type (~50 ms a figure)."""
    axis = {"gridcolor": "#E5E5E5", "linecolor": "#BBBBBB", "zerolinecolor": "#CCCCCC", "ticks": "outside"}
    return go.layout.Template(layout={"paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": CATEGORICAL,
                                      "xaxis": axis, "yaxis": axis})


def pool(m: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
    """Block-average a [R, C] matrix so neither side exceeds max_side; returns (matrix, block size)."""
    R, C = m.shape
    b = max(1, int(np.ceil(max(R, C) / max_side)))
    if b == 1:
        return m, 1
    Rp, Cp = -(-R // b) * b, -(-C // b) * b
    padded = np.full((Rp, Cp), np.nan, dtype=np.float64)
    padded[:R, :C] = m
    with np.errstate(invalid="ignore"):
        return np.nanmean(padded.reshape(Rp // b, b, Cp // b, b), axis=(1, 3)), b


def empty(title: str, message: str) -> go.Figure:
    """A figure that says why there is nothing to show (e.g. a gpt-oss-only view for a GPT-2 model)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title, height=240)
