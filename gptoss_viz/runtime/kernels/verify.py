"""Which Triton versions the fast path was verified on, and what the model does on another one.

The GPU tests (tests/test_kernels_gpu.py and friends) ran on Triton 3.6 (the GPU machine's, with its PyTorch 2.11)
and on Triton 3.7.1 (what PyTorch 2.13, this project's pin, installs on Linux; carried to the GPU machine for them:
benchmarks/RESULTS.md, twenty-fourth session). Two parts of the fast path lean on things that change between
Triton versions: `launch.Launcher` reproduces their argument specialisation and launch call (elsewhere every launch
goes through the JIT), and the Hopper MoE kernels are written in Gluon, Triton's experimental dialect, whose
names changed in 3.7-3.9 (moe_hopper.py maps them; benchmarks/kernel_compat.py compiles every kernel with the
installed Triton). Compiling is not being right, so on a Triton not listed here the model trusts the Hopper MoE
kernels only after they pass `moe_hopper.self_test` on the GPU, once per process and device; otherwise it runs
moe.py's Triton kernels (plain Triton, the same maths), and says why in a warning.

No Triton import here: the decision is plain Python, tested on any machine.
"""

from __future__ import annotations

from typing import Callable

VERIFIED_TRITON = ("3.6.", "3.7.1")  # version prefixes the GPU tests ran on


def verified(version: str) -> bool:
    return version.startswith(VERIFIED_TRITON)


def trusted(version: str, self_test: Callable[[], str | None], what: str) -> tuple[bool, str]:
    """(trust, why) for `what` on Triton `version`: trusted on a verified version without running anything; on
    another, trusted only if `self_test()` returns None (it returns what went wrong, or raises)."""
    if verified(version):
        return True, f"{what}: verified on Triton {version}"
    try:
        problem = self_test()
    except Exception as e:  # a compile error on a Triton whose API moved: the same answer, no crash
        problem = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:500]
    unverified = (f"{what}: Triton {version} is not a version they were verified on "
                  f"({', '.join(v + 'x' if v.endswith('.') else v for v in VERIFIED_TRITON)})")
    if problem is None:
        return True, f"{unverified}; they passed their self-test on this GPU"
    return False, (f"{unverified} and they failed their self-test on this GPU ({problem}); the model runs the other "
                   "MoE kernels instead")
