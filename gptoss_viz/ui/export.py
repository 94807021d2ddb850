"""Export of the current view as one self-contained HTML file (plotly.js inlined: opens off-line)."""

from __future__ import annotations

import html
import time

import plotly.io as pio


def export_html(figs: dict, tab: str, prompt: str, models: list[str], link: str, caption: str) -> str:
    """A page with the tab's figures, the prompt, the models and the share link. All text is escaped."""
    parts, first = [], True
    for name, fig in figs.items():
        if isinstance(fig, str):
            parts.append(f'<div class="html-block">{fig}</div>')  # built by figures/, already escaped
            continue
        parts.append(pio.to_html(fig, include_plotlyjs=True if first else False, full_html=False,
                                 config={"displaylogo": False}))
        first = False
    link_html = (f'<p>Share link: <a href="{html.escape(link, quote=True)}">{html.escape(link)}</a></p>'
                 if link else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gptoss-viz: {html.escape(tab)}</title>
<style>body{{font-family:Inter,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
pre{{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:1em;border-radius:6px}}
a{{overflow-wrap:anywhere}}
.tok{{display:inline-block;border:1px solid #ccc;border-radius:3px;margin:1px;padding:0 2px;font-family:monospace}}
.tokgrid{{display:flex;flex-wrap:wrap}} .tokcol{{border-left:1px dotted #bbb;padding:0 2px}}
table.archcard{{border-collapse:collapse}} table.archcard td,table.archcard th{{border:1px solid #ddd;padding:4px}}
</style></head><body>
<h1>gptoss-viz: {html.escape(tab)}</h1>
<p>{html.escape(caption)}</p>
<p>Models: {html.escape(", ".join(models))}. Exported {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.</p>
{link_html}
<h2>Prompt</h2><pre>{html.escape(prompt)}</pre>
{"".join(parts)}
</body></html>
"""
