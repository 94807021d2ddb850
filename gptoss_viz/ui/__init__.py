"""The Gradio app: tabs, per-user state, permalinks, uploads and exports. No tensor maths here: views come from
gptoss_viz.figures.views, models from the registry."""
