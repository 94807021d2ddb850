"""The Hopper MoE kernels of moe_hopper.py as two consumer warp groups and one loader warp a program, persistent:
what `HopperTile.duo` runs (hopper_tiles.duo_tile picks it for 20b at 4096 tokens and more, where each expert
takes 512 rows or more on average and moe_hopper's tile is 128+64).

moe_hopper's kernel is one warp group (64 output features) a program, three programs an SM, each copying each
activation tile into its own shared memory and issuing its own copies between its wgmmas. Here a program's default
partition is two warp groups in one code path (8 warps, 128 output features, each warp group its own m64 wgmma on
the one copy of each activation tile), and a worker partition of one warp (Gluon's warp_specialize) issues every
TMA copy, STAGES steps ahead, refilling a stage once the consumers hand it back through an `empty` mbarrier. The
consumers issue a step's wgmma before waiting for the step before's (one step in flight behind the one just issued;
the decoded weights alternate between two register sets, as in moe_hopper), then hand that step's stage back. The
grid is at most one program an SM: a program takes tiles pid, pid + grid, ... of (feature tile, schedule tile),
feature tiles first, and its loader runs on into its next tile while the consumers finish the one before (each
program's stages and barrier phases count on over its tiles). One program an SM (8 consumer warps of up to 240
registers; the loader's warp group 24-40).

Arithmetic, schedule, tile rows and epilogue are moe_hopper's (its _decode, _epilogue), in the same order, so the
outputs are the same bits as moe_hopper's kernel at the same tile with narrow tiles off (the GPU tests check it).
Narrow tiles are left out: with them in the persistent loop ptxas serialises the wgmmas (C7512, "insufficient
register resources"; without the loop it does not), and at 512 and more rows an expert few tiles are narrow.
On one 20b layer on an H100 (benchmarks/experiments/moe_duo.py, benchmarks/results/moe_duo_h100_s29*.json) gate_up
/ down took 0.940 / 0.455 ms against 1.040 / 0.504 at 4096 tokens and 1.78 / 0.88 against 2.05 / 1.00 at 8192
(5 stages); at 128+32 tiles (1024-4095 tokens) it was 0-7% slower than moe_hopper's, so it is not taken there.
Needs Triton 3.7 (moe_hopper.CLUSTERS: the Gluon it was measured with).
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from gptoss_viz.runtime.kernels import moe_hopper as mh
from gptoss_viz.runtime.kernels.launch import Launcher, cdiv

F = gl.constexpr(128)  # output features a program: two warp groups of 64
_F = F.value
LOADER_REGS = 40  # the loader warp's registers a thread (Triton pads its partition to a warp group)


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
def _duo_step(gs, w, acc0, acc20, a_smem, x_smem, empty, STAGES: gl.constexpr, EXTRA: gl.constexpr,
              AL2: gl.constexpr):
    """The program's step gs (not a tile's first) on its decoded weights w: issue its wgmma(s) behind the step
    before's, wait for that one's (the register set it read is then free for the next decode), release its stage."""
    st = gs % STAGES
    acc0 = hopper.warpgroup_mma(w, a_smem.index(st).permute((1, 0)), acc0, use_acc=True, is_async=True)
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
              BX: gl.constexpr, STAGES: gl.constexpr, EXTRA: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    """The consumers' K loop over the tile (the program's steps g..; [128, BT] and with EXTRA [128, BX] fp32
    accumulators) and the epilogue(s) of feature tile pid_n of 128. Returns the program's next step."""
    ACC: gl.constexpr = _acc(BT)
    ACC2: gl.constexpr = _acc(BX)
    AL: gl.constexpr = gl.DotOperandLayout(0, ACC, 2)
    AL2: gl.constexpr = gl.DotOperandLayout(0, ACC2, 2)
    WL: gl.constexpr = _words()
    acc0 = gl.zeros([F, BT], gl.float32, ACC)
    acc20 = gl.zeros([F, BX], gl.float32, ACC2)
    # step 0, peeled: use_acc=False on a zero accumulator
    wa = _duo_decode(g, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
    st = g % STAGES
    acc0 = hopper.warpgroup_mma(wa, a_smem.index(st).permute((1, 0)), acc0, use_acc=False, is_async=True)
    if EXTRA:
        acc20 = hopper.warpgroup_mma(gl.convert_layout(wa, AL2), x_smem.index(st).permute((1, 0)), acc20,
                                     use_acc=False, is_async=True)
        acc0, acc20 = hopper.warpgroup_mma_wait(2, deps=[acc0, acc20])  # (waits for nothing: the loop's types)
    else:
        acc0 = hopper.warpgroup_mma_wait(1, deps=[acc0])
    # two steps an iteration, the decoded weights alternating between two register sets (wb, wa)
    for k in range(1, num_k - 1, 2):
        wb = _duo_decode(g + k, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + k, wb, acc0, acc20, a_smem, x_smem, empty, STAGES, EXTRA, AL2)
        wa = _duo_decode(g + k + 1, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + k + 1, wa, acc0, acc20, a_smem, x_smem, empty, STAGES, EXTRA, AL2)
    if num_k % 2 == 0:
        wb = _duo_decode(g + num_k - 1, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _duo_step(g + num_k - 1, wb, acc0, acc20, a_smem, x_smem, empty, STAGES, EXTRA, AL2)
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
                     stride_om, limit, alpha, a_smem, GATE_UP, BT, F)
    return g + num_k


@gluon.jit
def _duo_consumers(a_smem, x_smem, w_smem, s_smem, ready, empty, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                   tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N, stride_biase, stride_om, limit,
                   alpha, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                   ONE_MULTIPLY: gl.constexpr):
    """The default partition (two warp groups): the program's tiles, with the overflow rows' wgmma where a tile has
    more than BT rows."""
    num_k = K // 64
    g = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        pid_m, pid_n, start, end = _duo_item(item, NF, tile_start_ptr, tile_end_ptr)
        if start < end:  # else a spare tile of the static grid
            e = gl.load(tile_expert_ptr + pid_m).to(gl.int64)
            if end - start > BT:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, True, ONE_MULTIPLY)
            else:
                g = _duo_tile(a_smem, x_smem, w_smem, s_smem, ready, empty, g, order_ptr, route_w_ptr, bias_ptr,
                              out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, num_k, GATE_UP,
                              BT, BX, STAGES, False, ONE_MULTIPLY)


@gluon.jit
def _moe_hopper_duo_kernel(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                    tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF, K, N, stride_biase, stride_om, limit,
                    alpha, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                    ONE_MULTIPLY: gl.constexpr, LREGS: gl.constexpr):
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
                          limit, alpha, GATE_UP, BT, BX, STAGES, ONE_MULTIPLY)),
        (_duo_loader, (a_desc, x_desc, w_desc, s_desc, tile_expert_ptr, tile_start_ptr, tile_end_ptr, n_items, NF,
                       K, N, a_smem, x_smem, w_smem, s_smem, ready, empty, BT, STAGES)),
    ], [1], [LREGS])
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))
        mbarrier.invalidate(empty.index(i))


_moe_hopper_duo_launch = Launcher(_moe_hopper_duo_kernel)


@functools.lru_cache(maxsize=None)
def programs(device: torch.device) -> int:
    """The persistent grid's size: one program an SM."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(descs, order, route_w, bias, out, s, K: int, N: int, limit: float, alpha: float, gate_up: bool, bt: int,
           bx: int, one_multiply: bool, kwargs: dict) -> None:
    """One of moe_hopper's two launches (gate_up or down, the same arguments as its kernel's) on these kernels:
    persistent, at most one program an SM, each over items pid, pid + grid, ... of the cdiv(N, 128) feature tiles x
    the schedule s's tiles."""
    nf = cdiv(N, _F)
    items = nf * s.n_tiles
    _moe_hopper_duo_launch[(min(items, programs(out.device)),)](
        *descs, order, route_w, bias, out, s.tile_expert, s.tile_start, s.tile_end, items, nf, K, N,
        bias.stride(0), out.stride(0), limit, alpha, GATE_UP=gate_up, BT=bt, BX=bx, ONE_MULTIPLY=one_multiply,
        **kwargs)
