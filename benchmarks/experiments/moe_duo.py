"""Experiment (issue 6): the Hopper MoE kernels as two consumer warp groups and one loader warp a program.

kernels/moe_hopper.py runs one warp group (64 output features) a program, three programs an SM, each loading its
own copy of the activation tile into shared memory and issuing its own copies. The twenty-eighth session tried
warp groups sharing that copy two ways: three in Gluon's warp_specialize (ptxas serialises every wgmma once two
partitions issue them) and two in one code path with the copies issued by the warp groups themselves between a CTA
barrier and the next wgmma (not serialised, 16-40% slower). This is the layout Hopper GEMM libraries use for mixed-
input matmuls instead: the default partition is two warp groups in one code path (8 warps, 128 output features, each
warp group its own m64 wgmma on the one copy of each activation tile), and a worker partition of one warp issues
every TMA copy, STAGES ahead, refilling a stage once the consumers release it through an `empty` mbarrier. The
consumers issue step k's wgmma before waiting for step k-1's (wait(1): one step in flight behind the one just
issued; the decoded weights in two register sets, as in moe_hopper), so the tensor cores have the next step queued
while a step is released and the next one decoded. Arithmetic, tile rows, schedule and epilogue: moe_hopper's (the
same bits). One program an SM (8 consumer warps of up to ~232 registers).

    python benchmarks/experiments/moe_duo.py --compile          (CPU: compile for sm_90; shared memory, registers,
                                                                 whether ptxas serialises the wgmmas)
    python benchmarks/experiments/moe_duo.py OUT.json [TOKENS]  (GPU: bits against moe_hopper, kernel times)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gptoss_viz.runtime.kernels import moe_hopper as mh  # noqa: E402
from gptoss_viz.runtime.kernels.fused import moe_schedule_fused  # noqa: E402
from gptoss_viz.runtime.kernels.launch import cdiv  # noqa: E402
from gptoss_viz.runtime.kernels.moe import sum_slots  # noqa: E402
from moe_trio import _stage_rows, grouped  # noqa: E402  (this folder: the script's own)

F = gl.constexpr(128)  # output features a program: two warp groups of 64
_F = F.value
LOADER_REGS = int(os.environ.get("DUO_LOADER_REGS", "40"))


@gluon.constexpr_function
def _acc(NB):
    """The accumulator layout of [128 features, NB rows] over two warp groups (each its own m64 wgmma)."""
    NB = getattr(NB, "value", NB)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, NB, 16])


@gluon.constexpr_function
def _words():
    """moe_hopper._word_layout for [128, 4, 2] over 8 warps: rows 64-127 on the second warp group."""
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0]], lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16, 0, 0], [32, 0, 0], [64, 0, 0]], block_bases=[], shape=[128, 4, 2])


@gluon.jit
def _duo_issue(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, st,
               kstep, BT: gl.constexpr, EXTRA: gl.constexpr):
    """Step kstep's copies into stage st: the activation rows (and with EXTRA the BX after them), the program's 128
    weight rows' words and their scales, all signalling the stage's `ready`."""
    nbytes: gl.constexpr = a_desc.block_type.nbytes + w_desc.block_type.nbytes + s_desc.block_type.nbytes
    if EXTRA:
        mbarrier.expect(ready.index(st), nbytes + x_desc.block_type.nbytes)
        mh._tma_load(x_desc, [start + BT, kstep * 64], ready.index(st), x_smem.index(st))
    else:
        mbarrier.expect(ready.index(st), nbytes)
    mh._tma_load(w_desc, [wrow, kstep * 8], ready.index(st), w_smem.index(st))
    mh._tma_load(s_desc, [srow + kstep, scol], ready.index(st), s_smem.index(st))
    mh._tma_load(a_desc, [start, kstep * 64], ready.index(st), a_smem.index(st))


@gluon.jit
def _duo_load_loop(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                   empty, g, num_k, BT: gl.constexpr, STAGES: gl.constexpr, EXTRA: gl.constexpr):
    """Steps 0..num_k-1 of a tile, the program's steps g.. (stages and phases run on over its tiles)."""
    for k in range(num_k):
        gs = g + k
        st = gs % STAGES
        # a stage's first fill waits on the phase before its barrier's first (complete by definition)
        mbarrier.wait(empty.index(st), ((gs // STAGES) & 1) ^ 1)
        _duo_issue(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                   st, k, BT, EXTRA)
    return g + num_k


@gluon.jit
def _duo_item(item, NF, tile_start_ptr, tile_end_ptr):
    """Work item `item` of a program: (schedule tile, feature tile, its first row, its end row); feature tiles
    first, so that programs next to each other share the rows."""
    pid_m = item // NF
    return pid_m, item % NF, gl.load(tile_start_ptr + pid_m), gl.load(tile_end_ptr + pid_m)


@gluon.jit
def _duo_loader(a_desc, x_desc, w_desc, s_desc, tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N,
                a_smem, x_smem, w_smem, s_smem, ready, empty, BT: gl.constexpr, STAGES: gl.constexpr):
    """The worker partition (one warp): every copy of the program's tiles, STAGES steps ahead of the consumers."""
    num_k = K // 64
    g = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        pid_m, pid_n, start, end = _duo_item(item, NF, tile_start_ptr, tile_end_ptr)
        if start < end:  # else a spare tile of the static grid
            e = gl.load(tile_expert_ptr + pid_m).to(gl.int32)
            wrow = e * N + pid_n * F
            srow = e * num_k
            scol = pid_n * 2 * F
            if end - start > BT:
                g = _duo_load_loop(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem,
                                   s_smem, ready, empty, g, num_k, BT, STAGES, True)
            else:
                g = _duo_load_loop(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem,
                                   s_smem, ready, empty, g, num_k, BT, STAGES, False)


@gluon.jit
def _duo_decode(gs, w_smem, s_smem, ready, STAGES: gl.constexpr, AL: gl.constexpr, WL: gl.constexpr,
                ONE_MULTIPLY: gl.constexpr):
    """Wait for the program's step gs's stage; decode its 128 weight rows (each warp group its own 64)."""
    st = gs % STAGES
    mbarrier.wait(ready.index(st), (gs // STAGES) & 1)
    return mh._decode(mh._smem_words(w_smem, st, 0, F, WL), mh._smem_scales(s_smem, st, 0, F, WL), F, AL, WL,
                      ONE_MULTIPLY)


@gluon.jit
def _duo_release(gs, empty, STAGES: gl.constexpr):
    """Hand the program's step gs's stage back to the loader (every consumer warp is done with it)."""
    mh._cta_barrier()  # every consumer warp is done with the stage (words read, wgmmas complete)
    fence_async_shared()  # (the words were read by ordinary loads; the refill is an async-proxy write)
    mbarrier.arrive(empty.index(gs % STAGES), count=1)


@gluon.jit
def _duo_step(gs, w, acc0, acc20, a_smem, x_smem, empty, STAGES: gl.constexpr, BT: gl.constexpr,
              EXTRA: gl.constexpr, AL2: gl.constexpr, NB: gl.constexpr):
    """The program's step gs (not a tile's first) on its decoded weights w: issue its wgmma(s) behind the step
    before's, wait for that one's (the register set it read is then free for the next decode), release its stage."""
    st = gs % STAGES
    acc0 = hopper.warpgroup_mma(w, _stage_rows(a_smem, st, NB, BT), acc0, use_acc=True, is_async=True)
    if EXTRA:
        acc20 = hopper.warpgroup_mma(gl.convert_layout(w, AL2), x_smem.index(st).permute((1, 0)), acc20,
                                     use_acc=True, is_async=True)
        acc0, acc20 = hopper.warpgroup_mma_wait(2, deps=[acc0, acc20])
    else:
        acc0 = hopper.warpgroup_mma_wait(1, deps=[acc0])
    _duo_release(gs - 1, empty, STAGES)
    return acc0, acc20


@gluon.jit
def _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
              end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP: gl.constexpr, BT: gl.constexpr,
              BX: gl.constexpr, STAGES: gl.constexpr, EXTRA: gl.constexpr, NB: gl.constexpr,
              ONE_MULTIPLY: gl.constexpr):
    """The consumers' K loop over the tile (the program's steps g..; [128, NB] and with EXTRA [128, BX] fp32
    accumulators) and the epilogue(s) of feature tile pid_n of 128. Returns the program's next step."""
    ACC: gl.constexpr = _acc(NB)
    ACC2: gl.constexpr = _acc(BX)
    AL: gl.constexpr = gl.DotOperandLayout(0, ACC, 2)
    AL2: gl.constexpr = gl.DotOperandLayout(0, ACC2, 2)
    WL: gl.constexpr = _words()
    acc0 = gl.zeros([F, NB], gl.float32, ACC)
    acc20 = gl.zeros([F, BX], gl.float32, ACC2)
    # step 0, peeled: use_acc=False on a zero accumulator
    wa = _duo_decode(g, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
    st = g % STAGES
    acc0 = hopper.warpgroup_mma(wa, _stage_rows(a_smem, st, NB, BT), acc0, use_acc=False, is_async=True)
    if EXTRA:
        acc20 = hopper.warpgroup_mma(gl.convert_layout(wa, AL2), x_smem.index(st).permute((1, 0)), acc20,
                                     use_acc=False, is_async=True)
        acc0, acc20 = hopper.warpgroup_mma_wait(2, deps=[acc0, acc20])  # (waits for nothing: the loop's types)
    else:
        acc0 = hopper.warpgroup_mma_wait(1, deps=[acc0])
    # two steps an iteration, the decoded weights alternating between two register sets (wb, wa)
    for k in range(1, num_k - 1, 2):
        wb = _duo_decode(g + k, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + k, wb, acc0, acc20, a_smem, x_smem, empty, STAGES, BT, EXTRA, AL2, NB)
        wa = _duo_decode(g + k + 1, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + k + 1, wa, acc0, acc20, a_smem, x_smem, empty, STAGES, BT, EXTRA, AL2, NB)
    if num_k % 2 == 0:
        wb = _duo_decode(g + num_k - 1, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + num_k - 1, wb, acc0, acc20, a_smem, x_smem, empty, STAGES, BT, EXTRA, AL2, NB)
    if EXTRA:
        acc0, acc20 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc20])
    else:
        acc0 = hopper.warpgroup_mma_wait(0, deps=[acc0])
    _duo_release(g + num_k - 1, empty, STAGES)  # the tile's last stage: the loader may be on the next tile
    if EXTRA:
        mh._epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, start + BT, pid_n, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, BT, F)
        mh._epilogue(acc20, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start + BT, end, pid_n, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, BX, F)
    else:
        mh._epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, pid_n, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, NB, F)
    return g + num_k


@gluon.jit
def _duo_consumers(a_smem, x_smem, w_smem, s_smem, ready, empty, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                   tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N, stride_biase, stride_om, limit,
                   alpha, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                   NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    """The default partition (two warp groups): the program's tiles, each in the shape (overflow rows, narrow)
    moe_hopper picks for it."""
    num_k = K // 64
    g = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        pid_m, pid_n, start, end = _duo_item(item, NF, tile_start_ptr, tile_end_ptr)
        if start < end:
            e = gl.load(tile_expert_ptr + pid_m).to(gl.int64)
            rows = end - start
            if rows > BT:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, True, BT, ONE_MULTIPLY)
            elif NARROW == 2 and rows <= BT // 4:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, False, BT // 4, ONE_MULTIPLY)
            elif NARROW >= 1 and rows <= BT // 2:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, False, BT // 2, ONE_MULTIPLY)
            else:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, False, BT, ONE_MULTIPLY)


@gluon.jit
def _moe_duo_kernel(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                    tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N, stride_biase, stride_om, limit,
                    alpha, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                    NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr, LREGS: gl.constexpr):
    """moe_hopper._moe_hopper_kernel with 128 output features a tile in two consumer warp groups (the default
    partition) and a loader warp (LREGS registers a thread). A program takes items pid, pid + grid, ... of the
    n_items = NF feature tiles x the schedule's tiles (feature tiles first): a grid of n_items is one each, as
    moe_hopper's; a smaller one is persistent (the loader runs on into a program's next tile while the consumers
    finish the one before)."""
    gl.static_assert(gl.num_warps() == 8, "the default partition: two warp groups")
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, 64], a_desc.layout)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BX, 64], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, F, 8], w_desc.layout)
    s_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, 1, 2 * F], s_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    gl.warp_specialize([
        (_duo_consumers, (a_smem, x_smem, w_smem, s_smem, ready, empty, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                          tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N, stride_biase, stride_om,
                          limit, alpha, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)),
        (_duo_loader, (a_desc, x_desc, w_desc, s_desc, tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF,
                       K, N, a_smem, x_smem, w_smem, s_smem, ready, empty, BT, STAGES)),
    ], [1], [LREGS])
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))
        mbarrier.invalidate(empty.index(i))


def moe_mxfp4_duo(x, idx, weight, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                  limit, alpha, tile: mh.HopperTile | None = None, stages: int = 4, one_multiply: bool = True,
                  maxnreg: int | None = None, persistent: int = 0):
    """moe_hopper.moe_mxfp4_hopper (its schedule and tile rows; no clusters) with these kernels; `persistent`:
    at most that many programs (each then takes several tiles), 0 for one program a tile."""
    N, d, E, two_i, I, A, t, bt, bxk, s, xs, act = grouped(x, idx, gate_up_bias, tile, moe_schedule_fused)
    narrow = int(os.environ.get("DUO_NARROW", "0")) if t.narrow and bt >= 64 else 0
    kw = dict(BT=bt, BX=bxk, STAGES=stages, NARROW=narrow, ONE_MULTIPLY=bool(one_multiply), num_warps=8,
              LREGS=LOADER_REGS)
    if maxnreg:
        kw["maxnreg"] = maxnreg
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as TD
    desc = lambda t_, box, lay: TD.from_tensor(t_, box, lay)  # noqa: E731
    nf = cdiv(two_i, _F)
    items = nf * s.n_tiles
    _moe_duo_kernel[(min(items, persistent) if persistent else items,)](
        desc(xs, [bt, 64], mh._rows_layout(bt)), desc(xs, [bxk, 64], mh._rows_layout(bxk)),
        desc(gate_up_blocks.view(torch.int32).view(E * two_i, d // 8), [_F, 8], mh._WORDS),
        desc(gate_up_scales.view(E * (d // 64), 2 * two_i), [1, 2 * _F], mh._SCALES),
        s.order, s.order, gate_up_bias, act, s.tile_expert, s.tile_start, s.tile_end, items, nf, d, two_i,
        gate_up_bias.stride(0), act.stride(0), float(limit), float(alpha), GATE_UP=True, **kw)
    y = torch.empty(A, d, device=x.device, dtype=x.dtype)
    route_w = weight.reshape(-1).contiguous()
    nf = cdiv(d, _F)
    items = nf * s.n_tiles
    _moe_duo_kernel[(min(items, persistent) if persistent else items,)](
        desc(act, [bt, 64], mh._rows_layout(bt)), desc(act, [bxk, 64], mh._rows_layout(bxk)),
        desc(down_blocks.view(torch.int32).view(E * d, I // 8), [_F, 8], mh._WORDS),
        desc(down_scales.view(E * (I // 64), 2 * d), [1, 2 * _F], mh._SCALES),
        s.order, route_w, down_bias, y, s.tile_expert, s.tile_start, s.tile_end, items, nf, I, d,
        down_bias.stride(0), y.stride(0), 0.0, 0.0, GATE_UP=False, **kw)
    return sum_slots(y, N, x.dtype)


def _ptxas_summary(kernel) -> str:
    """ptxas -v's register, spill and advisory lines for the kernel's PTX (Triton's flags)."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(kernel.asm["ptx"])
        run = subprocess.run([get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
                              str(src), "-o", str(src) + ".o"], capture_output=True, text=True)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines()
             if "registers" in ln or "spill" in ln or "C75" in ln]
    return " | ".join(lines)[:1500]


def _compile_only():
    """Compile both launches for sm_90 on CPU tensors (kernel_compat.py's driver); print shared memory, registers
    and whether ptxas serialises the wgmmas."""
    import kernel_compat
    import moe_trio

    global moe_schedule_fused
    moe_schedule_fused = moe_trio.reference_schedule
    args = moe_trio.cpu_compile_args()
    for stages in [int(a) for a in os.environ.get("DUO_STAGES", "3,4,5,6").split(",")]:
        del kernel_compat.COMPILED[:]
        try:
            with torch.inference_mode():
                moe_mxfp4_duo(*args, stages=stages, persistent=132)
            for kk in kernel_compat.COMPILED:
                if "duo" in kk.name:
                    print(f"stages {stages}: shared {kk.metadata.shared}, warps {kk.metadata.num_warps}, "
                          f"serialised {kernel_compat.wgmma_serialised(kk, 90)}; ptxas: {_ptxas_summary(kk)}",
                          flush=True)
                    if os.environ.get("DUO_PTX"):
                        Path(os.environ["DUO_PTX"]).write_text(kk.asm["ptx"])
        except Exception as e:
            print(f"stages {stages}: {type(e).__name__}: {str(e)[:3000]}")
            if os.environ.get("DUO_RAISE"):
                raise


def main() -> None:
    if sys.argv[1:2] == ["--compile"]:
        return _compile_only()
    from moe_hopper import header, hopper_layer
    from moe_trio import compare
    from moe_variants import routed

    out = Path(sys.argv[1])
    counts = [int(a) for a in sys.argv[2:]] or [512, 1024, 2048, 4096]
    cfg, mlp, gu, dn, gus, dns = hopper_layer()
    ex = mlp.experts
    g = torch.Generator(device="cuda").manual_seed(2)
    R = {**header(), "loader_regs": LOADER_REGS, "counts": []}
    stages = [int(a) for a in os.environ.get("DUO_STAGES", "3,4,5").split(",")]
    for T in counts:
        x = torch.randn(T, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        tile = mh.hopper_tile(T * 4 / 32)
        if os.environ.get("DUO_TILE"):  # "BT,BX": the duo's tile rows instead of the rule's (the product's stay)
            tile = tile._replace(bt=int(os.environ["DUO_TILE"].split(",")[0]),
                                 bx=int(os.environ["DUO_TILE"].split(",")[1]))
        rec = {"tokens": T, "tile": list(tile), "variants": {}}
        with torch.inference_mode():
            base = lambda: mh.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,  # noqa: E731
                                               ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=True)
            ref = base()
            variants = {"product": base}
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            for st in stages:
                for p in (0, sms):
                    variants[f"duo s{st}" + (" persistent" if p else "")] = (lambda st=st, p=p: moe_mxfp4_duo(
                        x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns, ex.down_proj_bias, ex.limit, ex.alpha,
                        tile=tile, stages=st, persistent=p))
            variants["product again"] = base
            rec["variants"] = compare(T, variants, ref, ("moe_hopper", "moe_duo"))
        R["counts"].append(rec)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(R, indent=1))  # (after each count: a run cut short keeps what it measured)


if __name__ == "__main__":
    main()
