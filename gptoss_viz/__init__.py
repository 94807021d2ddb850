"""gptoss-viz: an explainer of what changed from GPT-2 to gpt-oss, computed live from real forward passes.

Public entry point: `load_model(source, device=None, dtype=None)`; see ../DESIGN.md (shared) for the contract.
"""

from gptoss_viz.errors import GptOssVizError, InputError, ModelLoadError


def load_model(source, device=None, dtype=None, **kwargs):
    """Load a gpt-oss or GPT-2 model: a bundled name, a local HF-format directory, or a Hub id."""
    from gptoss_viz.runtime.checkpoints import load_model as _load

    return _load(source, device=device, dtype=dtype, **kwargs)


def prefer_expandable_segments() -> None:
    """For the app and the command line, before anything touches CUDA: let PyTorch's allocator grow its segments
    (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) unless the user configured it. gpt-oss-20b's weights leave
    ~2 GiB of a 16 GB card; with fixed segments the 4096-token full trace failed there for want of one contiguous
    1.5 GiB block while 1.9 GiB sat reserved but free (benchmarks/gpu_memory_cap.py, emulated card)."""
    import os

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


__all__ = ["load_model", "prefer_expandable_segments", "GptOssVizError", "InputError", "ModelLoadError"]
