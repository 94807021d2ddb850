"""Pure functions: analysis results -> plotly Figures (and escaped HTML snippets). Never imports gradio.

One theme and colour-blind-safe palettes for all (see _base); token strings are always escaped text.
"""

from gptoss_viz.figures import overview, positions, routing, sinks, windows

__all__ = ["overview", "positions", "routing", "sinks", "windows"]
