"""kernels/launch.py's direct launch (_Direct) hands the compiled kernel's C launch function exactly what Triton's own
CudaLauncher hands it, in the installed Triton's order (3.6 and 3.7 differ), tensor-descriptor arguments expanded
the same way. No GPU: a stand-in for the C function records each call. Skipped where Triton is not installed, or
on a Triton where the Launcher launches through the JIT. test_launch_gpu.py runs real launches on a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from gptoss_viz.runtime.kernels import launch  # noqa: E402

pytestmark = pytest.mark.skipif(not launch.DIRECT, reason="the Launcher launches through the JIT on this Triton")


def _run(record, signature=None):
    """A CudaLauncher as the JIT builds one for a kernel with `signature` (no scratch memory), whose C launch
    function is `record`: through wrap_handle_tensordesc, as Triton wraps it, where a descriptor is among the
    arguments (metadata None: a host descriptor, expanded without encoding a tensor map)."""
    run = object.__new__(launch._nvidia.CudaLauncher)
    fn = record
    if signature is not None:
        fn = launch._nvidia.wrap_handle_tensordesc(record, signature, None)
    run.launch = fn
    run.global_scratch_size = run.profile_scratch_size = 0
    run.global_scratch_align = run.profile_scratch_align = 1
    run.num_ctas = 1
    run.launch_cooperative_grid, run.launch_pdl = False, True
    run.arg_annotations, run.kernel_signature = ["the annotations"], b"the signature"  # (read on 3.7 only)
    return run


def _both(signature, args, tail):
    """(what CudaLauncher.__call__ passed to the C function, what _Direct passed) for one launch."""
    theirs, ours = [], []
    kernel = SimpleNamespace(function=0xF00, packed_metadata=(4, 1, 0))
    stream = 0x57
    launch._nvidia.CudaLauncher.__call__(_run(lambda *a: theirs.append(a), signature), 7, 3, 1, stream,
                                         kernel.function, kernel.packed_metadata, None, None, None, *args, *tail)
    direct = launch._Direct(_run(lambda *a: ours.append(a), signature))
    direct((7, 3), stream, kernel, args, tail)
    return theirs, ours


def test_direct_launch_passes_what_cudalauncher_passes():
    x = torch.empty(16)
    theirs, ours = _both(None, (x, 5, 2.5, True, None), (64, "constexpr"))
    assert len(theirs) == len(ours) == 1
    assert ours == theirs
    (call,) = ours
    assert any(a is x for a in (call[-1] if launch._LAUNCH_37 else call))  # 3.7: the arguments in one sequence


def test_direct_launch_expands_descriptors_as_cudalauncher_does():
    from triton.tools.tensor_descriptor import TensorDescriptor

    base = torch.empty(64, 32, dtype=torch.bfloat16)
    desc = TensorDescriptor(base, [64, 32], [32, 1], [16, 32])
    signature = {0: "i32", 1: "tensordesc<bf16[16, 32]>", 2: "*bf16", 3: "constexpr"}
    theirs, ours = _both(signature, (3, desc, base), (16,))
    assert ours == theirs
    direct = launch._Direct(_run(lambda *a: None, signature))
    assert list(direct.descs) == [1]  # found in the wrapper's closure, as build() relies on
