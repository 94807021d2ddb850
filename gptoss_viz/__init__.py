"""gptoss-viz: an explainer of what changed from GPT-2 to gpt-oss, computed live from real forward passes.

Public entry point: `load_model(source, device=None, dtype=None)`; see ../DESIGN.md (shared) for the contract.
"""

from gptoss_viz.errors import GptOssVizError, InputError, ModelLoadError


def load_model(source, device=None, dtype=None, **kwargs):
    """Load a gpt-oss or GPT-2 model: a bundled name, a local HF-format directory, or a Hub id."""
    from gptoss_viz.runtime.checkpoints import load_model as _load

    return _load(source, device=device, dtype=dtype, **kwargs)


__all__ = ["load_model", "GptOssVizError", "InputError", "ModelLoadError"]
