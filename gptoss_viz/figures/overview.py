"""Overview: the two tokenizations aligned, next-token predictions, and the GPT-2 -> gpt-oss change card."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from gptoss_viz.figures._base import GPT2_COLOR, GPTOSS_COLOR, label, style


def predictions_figure(gptoss: list[tuple[str, float]] | None, gpt2: list[tuple[str, float]] | None,
                       after: str | None, after_gpt2: str | None = None) -> go.Figure:
    """Top-5 next tokens of each model after the prompt, side by side. `after` / `after_gpt2`: the last token each
    model read (they differ in chat mode, where gpt-oss reads the rendered conversation, and where the two
    tokenizers end the text differently); the title names both when they differ."""
    fig = go.Figure()
    for name, preds, color in (("gpt-oss", gptoss, GPTOSS_COLOR), ("GPT-2", gpt2, GPT2_COLOR)):
        if not preds:
            continue
        toks = [f"{name}: {label(t)}" for t, _ in preds][::-1]
        probs = [p for _, p in preds][::-1]
        fig.add_bar(x=probs, y=toks, orientation="h", name=name, marker_color=color,
                    hovertemplate="%{y}<br>p = %{x:.3f}<extra></extra>")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(type="category")  # token labels such as "2" must not be read as numbers
    ends = [a for a in (after, after_gpt2) if a is not None]
    if len(set(ends)) <= 1:
        title = f"Next token after \u201c{label(ends[0], 30)}\u201d (top 5)" if ends else "Next token (top 5)"
    else:
        title = (f"Next token (top 5): gpt-oss after \u201c{label(after, 20)}\u201d, GPT-2 after "
                 f"\u201c{label(after_gpt2, 20)}\u201d")
    return style(fig, title, "probability", "", height=360)


def token_strip_html(tokens: list[str], groups: list[tuple[list[int], list[int]]] | None = None,
                     other: list[str] | None = None, names: tuple[str, str] = ("gpt-oss", "GPT-2")) -> str:
    """The prompt as token chips, one row per model; with `groups` the chips of text covering the same
    characters sit in one column. All token text is escaped."""
    def chips(idx, toks):
        return "".join(f'<span class="tok" title="token {i}">{label(toks[i], 40)}</span>' for i in idx)

    if groups is None or other is None:
        return (f'<div class="tokrow"><b>{html.escape(names[0])}</b> ({len(tokens)} tokens): '
                f'{chips(range(len(tokens)), tokens)}</div>')
    cols = "".join(f'<div class="tokcol"><div>{chips(a, tokens)}</div><div>{chips(b, other)}</div></div>'
                   for a, b in groups)
    return (f'<div class="tokhead"><b>{html.escape(names[0])}</b>: {len(tokens)} tokens (top row) &middot; '
            f'<b>{html.escape(names[1])}</b>: {len(other)} tokens (bottom row)</div><div class="tokgrid">{cols}</div>')


def architecture_card_html(rows: list[dict]) -> str:
    """The changes from GPT-2 to gpt-oss as a table, numbers from the loaded configs."""
    body = "".join(
        f"<tr><td>{html.escape(r['change'])}</td><td>{html.escape(r['gpt2'])}</td>"
        f"<td>{html.escape(r['gptoss'])}</td><td>{html.escape(r['why'])}</td></tr>" for r in rows)
    return ('<table class="archcard"><thead><tr><th>change</th><th>GPT-2</th><th>gpt-oss</th><th>why it matters'
            f"</th></tr></thead><tbody>{body}</tbody></table>")
