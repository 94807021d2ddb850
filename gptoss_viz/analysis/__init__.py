"""Pure functions Trace -> numbers and arrays for the views. No plotting, no UI, no model maths of their own:
where a view needs model maths (masks, RoPE frequencies, one head's pattern) it calls the runtime's functions.

Modules: overview (configs, parameters, KV cache, predictions, token alignment), routing, sinks, windows,
positions.
"""

from gptoss_viz.analysis import overview, positions, routing, sinks, windows

__all__ = ["overview", "positions", "routing", "sinks", "windows"]
