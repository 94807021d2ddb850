"""The fast path's kernels compile for sm_90 on the CPU (benchmarks/kernel_compat.py, nothing runs), and ptxas keeps
the wgmmas of those that an H100/H200 runs for gpt-oss in bf16 pipelined. When ptxas serialises them instead (its
C7510-C7512 advisories: each wgmma waited for before the next), the kernels still give the right bits and only
run slower: 1.3x for the MoE kernels in the twenty-eighth session's experiment (RESULTS.md). So no GPU test would
see it; this one does. A tile that ptxas is known to serialise (kernel_compat.CONTROL) shows that the check sees
it.

moe.py's Triton kernels, which sm_90 runs only for fp16 activations or widths that are not multiples of 64, are
compiled but not held to this (ptxas serialises their 16- and 32-row classes with Triton 3.7.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ptxas() -> str | None:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception:  # no Triton, or no ptxas for this platform
        return None
    return path if path and os.path.exists(path) else None


@pytest.mark.skipif(_ptxas() is None, reason="needs Triton with its bundled ptxas")
def test_sm90_kernels_compile_with_their_wgmmas_pipelined(tmp_path):
    out = tmp_path / "kernel_compat.json"
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton-cache"), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compat.py"), "--arch", "90", "--wgmma",
                          "--control", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    R = json.loads(out.read_text())
    failed = {n: r for n, r in R["kernels"].items() if r != "ok"}
    assert not failed, failed
    serial = R["wgmma_serialised"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from kernel_compat import CONTROL
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert serial.get(CONTROL) is True, "the check did not see the control tile's serialised wgmmas"
    held = {n: f for n, f in serial.items() if n != CONTROL and not n.startswith("moe.py")}
    hopper = [n for n in held if n.startswith("Hopper MoE kernels")]
    assert len(hopper) >= 5 and any(n.startswith("attention") for n in held), held  # the check reached them
    assert not any(held.values()), {n: f for n, f in held.items() if f}
