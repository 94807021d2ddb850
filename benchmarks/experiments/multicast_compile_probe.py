"""What Gluon's cluster API (Triton 3.7+) compiles to on sm_90, on the CPU: groundwork for MoE kernels whose
activation tiles come by TMA multicast (RESULTS.md, twenty-third and twenty-fourth sessions). No GPU: each kernel is
compiled through Triton's warm-up (kernel_compat.py's stand-in driver) and its PTX read.

Two toy kernels, launched as clusters of two CTAs (num_ctas=2):
- `tile`: a [128, 64] bf16 tile into shared memory whose layout holds the whole tile in both CTAs (cga_layout
  [[0, 0]]), by one TMA copy with multicast=True, waited on with one mbarrier a CTA (allocate_mbarrier), then
  stored. The PTX shows who issues the copy, to which CTAs, and what each CTA's barrier expects.
- `arrive`: one mbarrier with a broadcast layout (cga_layout [[0]]) that both CTAs arrive on. The PTX shows whether
  the arrival reaches another CTA's barrier (needed for "the other CTA is done with this stage").

    python benchmarks/experiments/multicast_compile_probe.py [OUT.json]     (written for Triton 3.7.1, the pinned
    torch's; Triton 3.9 has no mbarrier.sync_cluster_init)
"""

import json
import sys
from pathlib import Path

import torch
import triton
from triton.runtime import driver

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_compat import _Target  # noqa: E402

driver.set_active(_Target(90))

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

BROADCAST = [[0, 0]]  # the CTA bit maps to no offset: each of the two CTAs holds the whole tensor


@gluon.jit
def tile(desc, out_ptr, BM: gl.constexpr, BK: gl.constexpr, SL: gl.constexpr, OUT: gl.constexpr):
    smem = gl.allocate_shared_memory(gl.bfloat16, [BM, BK], SL)
    bar = mbarrier.allocate_mbarrier()  # one a CTA
    mbarrier.init(bar, count=1)
    mbarrier.sync_cluster_init()
    mbarrier.expect(bar, BM * BK * 2)
    tma.async_copy_global_to_shared(desc, [0, 0], bar, smem, multicast=True)
    mbarrier.wait(bar, 0)
    x = smem.load(OUT)
    rm = gl.arange(0, BM, gl.SliceLayout(1, OUT))
    rk = gl.arange(0, BK, gl.SliceLayout(0, OUT))
    gl.store(out_ptr + rm[:, None] * BK + rk[None, :], x)


@gluon.jit
def arrive(out_ptr):
    empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout(cga_layout=[[0]]))
    mbarrier.init(empty, count=2)
    mbarrier.sync_cluster_init()
    mbarrier.arrive(empty)
    mbarrier.wait(empty, 0)


def ptx_lines(kernel, words) -> list[str]:
    return [line.strip() for line in kernel.asm["ptx"].splitlines()
            if any(w in line for w in words) and not line.strip().startswith((".loc", ".file"))]


def main() -> None:
    words = ("cp.async.bulk", "mbarrier", "cluster", "mapa", "ctarank", "mov.b16")
    x = torch.randn(256, 64).to(torch.bfloat16)
    sl = gl.NVMMASharedLayout.get_default_for([128, 64], gl.bfloat16, cga_layout=BROADCAST)
    desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [128, 64], sl)
    out = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0], cga_layout=BROADCAST)
    k1 = tile.warmup(desc, torch.empty(128, 64).to(torch.bfloat16), BM=128, BK=64, SL=sl, OUT=out, num_ctas=2,
                     num_warps=4, grid=(1,))
    k2 = arrive.warmup(torch.empty(4), num_ctas=2, num_warps=4, grid=(1,))
    R = {"triton": triton.__version__, "arch": 90, "tile": ptx_lines(k1, words), "arrive": ptx_lines(k2, words)}
    for name in ("tile", "arrive"):
        print(f"--- {name}")
        print("\n".join(R[name]))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
