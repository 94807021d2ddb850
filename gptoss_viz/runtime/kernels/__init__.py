"""Optional Triton fast paths for gpt-oss on CUDA: the MXFP4 mixture of experts and attention with sinks.

Nothing here is imported unless the model runs on a CUDA device (gptoss.py imports this package lazily), so the
readable plain-PyTorch reference in gptoss.py stays the default everywhere else. Each kernel computes the same
function as a reference pure function and is tested against it (tests/test_kernels_gpu.py):

- `moe.moe_mxfp4`: MoE.combine with the expert weights dequantized from MXFP4 inside the matmul (never expanded
  in memory), tokens grouped by expert, bf16 activations, fp32 accumulation, bias + clamped SwiGLU fused.
- `moe_hopper.moe_mxfp4_hopper`: the same on sm_90 in bf16 (what the model runs on an H100/H200), in Gluon: the
  decoded weights are wgmma's register operand, the packed blocks and scales kept in mxfp4.to_hopper_order and
  to_hopper_scales (the model re-arranges them in place once, Experts.use_hopper_order) and brought in by TMA.
  For long prompts (hopper_tiles.duo_tile: a mean of 512 or more rows an expert, on Triton 3.7) its launches run
  `moe_hopper_duo`'s kernels instead: two consumer warp groups sharing each activation tile and a loader warp a
  program, one program an SM, the same arithmetic and the same bits.
- `attention.attention_with_sinks_fused`: attention_with_sinks + attend without materialising the [H, T, T]
  pattern (flash-attention style online softmax whose running state starts at the sink column), returning the
  sink probability per head and query on request (exp(sink - logsumexp), one value per row).

`available()` says whether Triton can be used at all; the model decides per call (hooks that need the full
tensors keep the reference path) and records which path ran. `verify.py` says which Triton versions the kernels
were verified on, and what the model does on another one (the Hopper MoE kernels must first pass a self-test).
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install (no CUDA toolchain)
        log.info("Triton unavailable (%s): the reference PyTorch path runs", e)
        return False
    return True


def available(device: torch.device) -> bool:
    """True if the Triton kernels can run on `device` (a CUDA device with Triton installed)."""
    return device.type == "cuda" and _triton_importable()
