"""Small layout pieces the tabs share."""

from __future__ import annotations

import gradio as gr


def plot_row(*elem_ids: str) -> list[gr.Plot]:
    """A row of unlabelled plots, one per element id (the ids the browser tests and the PNG export find)."""
    with gr.Row():
        return [gr.Plot(show_label=False, elem_id=i) for i in elem_ids]
