"""What Gluon's cluster API (Triton 3.7+) compiles to on sm_90, on the CPU: groundwork for MoE kernels whose
activation tiles come by TMA multicast (RESULTS.md, twenty-third and twenty-fourth sessions). No GPU: each kernel is
compiled through Triton's warm-up (kernel_compat.py's stand-in driver) and its PTX read.

Two toy kernels, launched as clusters of two CTAs (num_ctas=2):
- `tile`: a [128, 64] bf16 tile into shared memory whose layout holds the whole tile in both CTAs (cga_layout
  [[0, 0]]), by one TMA copy with multicast=True, waited on with one mbarrier a CTA (allocate_mbarrier), then
  stored. The PTX shows who issues the copy, to which CTAs, and what each CTA's barrier expects.
- `split_mma`: the shape a multicast MoE program pair would have. Activation rows [BT, 64] come by that multicast
  copy; weights [2 BO, 64] and the fp32 accumulator [2 BO, BT] are split across the two CTAs by their layouts
  (cga_layout [[1, 0]]: a basis counts CTA tiles, not elements). Then one wgmma, A from registers, B from the shared
  tile. The PTX shows each CTA's wgmma shape.
- `split_tma`: weight words [128 rows, 8] int32 split across the two CTAs by their shared layout, by one TMA copy
  without multicast, with the cluster barrier split in two (`cluster.arrive` ... `cluster.wait`) around a read:
  how each CTA would load only its own features' weights, and how a stage would be handed back before a refill.
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
from triton.experimental.gluon.language.nvidia import hopper  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import cluster, mbarrier, tma  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

BROADCAST = [[0, 0]]  # the CTA bit maps to no offset: each of the two CTAs holds the whole tensor
SPLIT = [[1, 0]]  # the CTA bit picks the half of dim 0


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
def split_mma(xdesc, w_ptr, out_ptr, BO: gl.constexpr, BT: gl.constexpr, SL: gl.constexpr, ACC: gl.constexpr,
              AL: gl.constexpr, BL: gl.constexpr, OL: gl.constexpr):
    xs = gl.allocate_shared_memory(gl.bfloat16, [BT, 64], SL)  # both CTAs: the same rows
    bar = mbarrier.allocate_mbarrier()
    mbarrier.init(bar, count=1)
    mbarrier.sync_cluster_init()
    mbarrier.expect(bar, BT * 64 * 2)
    tma.async_copy_global_to_shared(xdesc, [0, 0], bar, xs, multicast=True)
    rf = gl.arange(0, 2 * BO, gl.SliceLayout(1, BL))  # features: the first BO in CTA 0, the next in CTA 1
    rk = gl.arange(0, 64, gl.SliceLayout(0, BL))
    w = gl.convert_layout(gl.load(w_ptr + rf[:, None] * 64 + rk[None, :]), AL)
    mbarrier.wait(bar, 0)
    acc = hopper.warpgroup_mma(w, xs.permute((1, 0)), gl.zeros([2 * BO, BT], gl.float32, ACC))
    acc = gl.convert_layout(acc, OL)
    ro = gl.arange(0, 2 * BO, gl.SliceLayout(1, OL))
    rt = gl.arange(0, BT, gl.SliceLayout(0, OL))
    gl.store(out_ptr + ro[:, None] * BT + rt[None, :], acc)


@gluon.jit
def split_tma(wdesc, out_ptr, WL: gl.constexpr, BL: gl.constexpr):
    ws = gl.allocate_shared_memory(gl.int32, [128, 8], WL)
    bar = mbarrier.allocate_mbarrier()
    mbarrier.init(bar, count=1)
    mbarrier.sync_cluster_init()
    mbarrier.expect(bar, 64 * 8 * 4)  # each CTA's half
    tma.async_copy_global_to_shared(wdesc, [0, 0], bar, ws)
    mbarrier.wait(bar, 0)
    cluster.arrive(relaxed=True)
    w = ws.load(BL)
    cluster.wait()
    rf = gl.arange(0, 128, gl.SliceLayout(1, BL))
    rk = gl.arange(0, 8, gl.SliceLayout(0, BL))
    gl.store(out_ptr + rf[:, None] * 8 + rk[None, :], w)


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
    BO, BT = 64, 128
    acc = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BT, 16], cga_layout=SPLIT)
    k3 = split_mma.warmup(desc, torch.empty(2 * BO, 64).to(torch.bfloat16), torch.empty(2 * BO, BT), BO=BO, BT=BT,
                          SL=sl, ACC=acc, AL=gl.DotOperandLayout(0, acc, 2),
                          BL=gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0], cga_layout=SPLIT),
                          OL=gl.BlockedLayout([1, 4], [1, 32], [4, 1], [1, 0], cga_layout=SPLIT),
                          num_ctas=2, num_warps=4, grid=(1,))
    wl = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2, cga_layout=SPLIT)
    wt = torch.zeros(256, 8, dtype=torch.int32)
    k4 = split_tma.warmup(TensorDescriptor(wt, list(wt.shape), list(wt.stride()), [128, 8], wl),
                          torch.empty(128, 8, dtype=torch.int32), WL=wl,
                          BL=gl.BlockedLayout([1, 8], [32, 1], [4, 1], [1, 0], cga_layout=SPLIT),
                          num_ctas=2, num_warps=4, grid=(1,))
    R = {"triton": triton.__version__, "arch": 90, "tile": ptx_lines(k1, words), "arrive": ptx_lines(k2, words),
         "split_mma": [line[:110] for line in ptx_lines(k3, words + ("wgmma",))],
         "split_tma": ptx_lines(k4, words + ("shl.b32", "and.b32"))}
    for name in ("tile", "arrive", "split_mma", "split_tma"):
        print(f"--- {name}")
        print("\n".join(R[name]))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
