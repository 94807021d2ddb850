"""Experiment (issue 6): the Hopper MoE kernels with three warp groups a program that share each activation tile.

kernels/moe_hopper.py runs one warp group (64 output features) a program, three programs an SM; each program loads
its own copy of the tile's activation rows into shared memory, so an SM takes in every activation tile three times
(and gate_up's cluster multicast halves what L2 sends, not what each SM takes in). Here a program is three warp
groups, 192 output features (gate_up 5760 = 30 x 192, down 2880 = 15 x 192), in Gluon's warp_specialize: the
default partition and two workers each run moe_hopper's K loop on their own 64 weight rows (the same decode, wgmma
and fp32 accumulation over the same K steps, so the same bits) against one copy of the activation stages. A stage
is refilled (by the default partition, after its own wgmma of the next step is issued) once all three have
released it through an `empty` mbarrier of count 3. Registers: 12 warps of at most 168 a thread fill the SM's file,
as three programs of 154 do now; shared memory: STAGES stages of 160 rows, 3 x 64 weight rows and their scales.

    python benchmarks/experiments/moe_trio.py --compile          (CPU: compile for sm_90, shared memory used)
    python benchmarks/experiments/moe_trio.py OUT.json [TOKENS]  (GPU: bits against moe_hopper, kernel times)
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

BO = gl.constexpr(mh.BO)
WG = gl.constexpr(3)  # warp groups (64-feature slices) a program
_BO, _WG = BO.value, WG.value  # (the same, for the host)


@gluon.jit
def _trio_issue(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                kstep, num_k, STAGES: gl.constexpr, BT: gl.constexpr, EXTRA: gl.constexpr):
    """moe_hopper._issue_tiles with the weight words and scales of WG warp groups as WG boxes of 64 rows each
    (Gluon's shared-memory shapes are powers of two): stage st's h-th at index WG * st + h."""
    st = kstep % STAGES
    live = kstep < num_k
    weights: gl.constexpr = WG * (w_desc.block_type.nbytes + s_desc.block_type.nbytes)
    if EXTRA:
        mbarrier.expect(ready.index(st), a_desc.block_type.nbytes + x_desc.block_type.nbytes + weights, pred=live)
        mh._tma_load(x_desc, [start + BT, kstep * 64], ready.index(st), x_smem.index(st), pred=live)
    else:
        mbarrier.expect(ready.index(st), a_desc.block_type.nbytes + weights, pred=live)
    for h in gl.static_range(WG):
        mh._tma_load(w_desc, [wrow + h * BO, kstep * 8], ready.index(st), w_smem.index(WG * st + h), pred=live)
        mh._tma_load(s_desc, [srow + kstep, scol + h * 2 * BO], ready.index(st), s_smem.index(WG * st + h),
                     pred=live)
    mh._tma_load(a_desc, [start, kstep * 64], ready.index(st), a_smem.index(st), pred=live)


@gluon.jit
def _stage_rows(a_smem, st, NB: gl.constexpr, BT: gl.constexpr):
    """Stage st's activation rows as wgmma's B operand: the first NB of its BT (a narrow tile), K-major."""
    if NB < BT:
        rows = a_smem.index(st).slice(0, NB)
    else:
        rows = a_smem.index(st)
    return rows.permute((1, 0))


@gluon.jit
def _trio_decode(k, h: gl.constexpr, w_smem, s_smem, ready, STAGES: gl.constexpr, AL: gl.constexpr,
                 WL: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    """Wait for step k's stage; decode this warp group's (h-th) 64 weight rows of it."""
    st = k % STAGES
    mbarrier.wait(ready.index(st), (k // STAGES) & 1)
    return mh._decode(mh._smem_words(w_smem, WG * st + h, 0, BO, WL), mh._smem_scales(s_smem, WG * st + h, 0, BO, WL),
                      BO, AL, WL, ONE_MULTIPLY)


@gluon.jit
def _trio_step(k, w, acc0, acc20, a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem,
               s_smem, ready, empty, num_k, LOAD: gl.constexpr, STAGES: gl.constexpr, BT: gl.constexpr,
               EXTRA: gl.constexpr, AL2: gl.constexpr, NB: gl.constexpr):
    """K step k >= 1 on decoded weights w: wait for step k-1's wgmma, release its stage, issue step k's wgmma; the
    loader (LOAD) then waits for all three warp groups to have released step k-1's stage and refills it with step
    k + STAGES - 1."""
    if EXTRA:
        acc0, acc20 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc20])
    else:
        acc0 = hopper.warpgroup_mma_wait(0, deps=[acc0])
    prev = (k - 1) % STAGES
    mh._cta_barrier()  # every warp of this group is done with step k-1's stage
    fence_async_shared()  # (its words were read by ordinary loads; the refill is an async-proxy write)
    mbarrier.arrive(empty.index(prev), count=1)
    st = k % STAGES
    acc0 = hopper.warpgroup_mma(w, _stage_rows(a_smem, st, NB, BT), acc0, use_acc=True, is_async=True)
    if EXTRA:
        acc20 = hopper.warpgroup_mma(gl.convert_layout(w, AL2), x_smem.index(st).permute((1, 0)), acc20,
                                     use_acc=True, is_async=True)
    if LOAD:
        mbarrier.wait(empty.index(prev), ((k - 1) // STAGES) & 1)
        _trio_issue(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                        ready, k + STAGES - 1, num_k, STAGES, BT, EXTRA)
    return acc0, acc20


@gluon.jit
def _trio_tile(h: gl.constexpr, LOAD: gl.constexpr, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr,
               bias_ptr, out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol,
               a_smem, x_smem, w_smem, s_smem, ready, empty, num_k, GATE_UP: gl.constexpr, BT: gl.constexpr,
               BX: gl.constexpr, STAGES: gl.constexpr, EXTRA: gl.constexpr, NB: gl.constexpr,
               ONE_MULTIPLY: gl.constexpr):
    """Warp group h's K loop over the tile ([64, NB] and with EXTRA [64, BX] fp32 accumulators) and its epilogue
    (feature tile WG * pid_n + h of 64)."""
    ACC: gl.constexpr = mh._acc_layout(NB, 1)
    ACC2: gl.constexpr = mh._acc_layout(BX, 1)
    AL: gl.constexpr = gl.DotOperandLayout(0, ACC, 2)
    AL2: gl.constexpr = gl.DotOperandLayout(0, ACC2, 2)
    WL: gl.constexpr = mh._word_layout(BO, 1)
    if LOAD:
        for i in gl.static_range(STAGES):  # steps 0 .. STAGES - 1 into the empty stages
            _trio_issue(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                            ready, i, num_k, STAGES, BT, EXTRA)
    acc0 = gl.zeros([BO, NB], gl.float32, ACC)
    acc20 = gl.zeros([BO, BX], gl.float32, ACC2)
    wa = _trio_decode(0, h, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
    acc0 = hopper.warpgroup_mma(wa, _stage_rows(a_smem, 0, NB, BT), acc0, use_acc=False, is_async=True)
    if EXTRA:
        acc20 = hopper.warpgroup_mma(gl.convert_layout(wa, AL2), x_smem.index(0).permute((1, 0)), acc20,
                                     use_acc=False, is_async=True)
    # (all STAGES stages were filled first, so step k's refill is step k + STAGES - 1 into step k-1's stage)
    for k in range(1, num_k - 1, 2):
        wb = _trio_decode(k, h, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _trio_step(k, wb, acc0, acc20, a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem,
                                 x_smem, w_smem, s_smem, ready, empty, num_k, LOAD, STAGES, BT, EXTRA, AL2, NB)
        wa = _trio_decode(k + 1, h, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _trio_step(k + 1, wa, acc0, acc20, a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol,
                                 a_smem, x_smem, w_smem, s_smem, ready, empty, num_k, LOAD, STAGES, BT, EXTRA, AL2,
                                 NB)
    if num_k % 2 == 0:
        wb = _trio_decode(num_k - 1, h, w_smem, s_smem, ready, STAGES, AL, WL, ONE_MULTIPLY)
        acc0, acc20 = _trio_step(num_k - 1, wb, acc0, acc20, a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol,
                                 a_smem, x_smem, w_smem, s_smem, ready, empty, num_k, LOAD, STAGES, BT, EXTRA, AL2,
                                 NB)
    if EXTRA:
        acc0, acc20 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc20])
    else:
        acc0 = hopper.warpgroup_mma_wait(0, deps=[acc0])
    f = pid_n * WG + h
    if EXTRA:
        mh._epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, start + BT, f, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, BT, BO)
        mh._epilogue(acc20, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start + BT, end, f, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, BX, BO)
    else:
        mh._epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, f, N, stride_biase,
                     stride_om, limit, alpha, a_smem, GATE_UP, NB, BO)


@gluon.jit
def _trio_part(h: gl.constexpr, LOAD: gl.constexpr, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr,
               bias_ptr, out_ptr, e, start, end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol,
               a_smem, x_smem, w_smem, s_smem, ready, empty, num_k, GATE_UP: gl.constexpr, BT: gl.constexpr,
               BX: gl.constexpr, STAGES: gl.constexpr, NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    """One warp group's part of the program: the tile's shape (overflow rows, narrow) as moe_hopper's kernel picks
    it (every warp group picks the same)."""
    rows = end - start
    if rows > BT:
        _trio_tile(h, LOAD, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                   pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                   ready, empty, num_k, GATE_UP, BT, BX, STAGES, True, BT, ONE_MULTIPLY)
    elif NARROW:
        if rows <= BT // 4:
            _trio_tile(h, LOAD, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
                       end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem,
                       s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, False, BT // 4, ONE_MULTIPLY)
        elif rows <= BT // 2:
            _trio_tile(h, LOAD, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
                       end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem,
                       s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, False, BT // 2, ONE_MULTIPLY)
        else:
            _trio_tile(h, LOAD, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
                       end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem,
                       s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, False, BT, ONE_MULTIPLY)
    else:
        _trio_tile(h, LOAD, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                   pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                   ready, empty, num_k, GATE_UP, BT, BX, STAGES, False, BT, ONE_MULTIPLY)


@gluon.jit
def _trio_worker(h: gl.constexpr, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e,
                 start, end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem,
                 s_smem, ready, empty, num_k, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr,
                 STAGES: gl.constexpr, NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    _trio_part(h, False, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
               pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
               ready, empty, num_k, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)


@gluon.jit
def _trio_default(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, pid_n,
                  N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                  empty, num_k, GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                  NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    _trio_part(0, True, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
               pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
               ready, empty, num_k, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)


@gluon.jit
def _moe_trio_kernel(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                     tile_expert_ptr, tile_start_ptr, tile_end_ptr, K, N, stride_biase, stride_om, limit, alpha,
                     GATE_UP: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
                     NARROW: gl.constexpr, ONE_MULTIPLY: gl.constexpr, WREGS: gl.constexpr):
    """moe_hopper._moe_hopper_kernel with WG * 64 output features a program, one warp group each. WREGS: the
    workers' registers a thread (setmaxnreg; without it Triton gave them 120 and the default partition 256, and
    ptxas serialised the workers' wgmmas for want of registers)."""
    gl.static_assert(gl.num_warps() == 4, "the default partition: one warp group")
    pid_n = gl.program_id(0)
    pid_m = gl.program_id(1)
    start = gl.load(tile_start_ptr + pid_m)
    end = gl.load(tile_end_ptr + pid_m)
    if start < end:
        e = gl.load(tile_expert_ptr + pid_m).to(gl.int64)
        num_k = K // 64
        a_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, 64], a_desc.layout)
        x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BX, 64], x_desc.layout)
        w_smem = gl.allocate_shared_memory(gl.int32, [WG * STAGES, BO, 8], w_desc.layout)
        s_smem = gl.allocate_shared_memory(gl.uint8, [WG * STAGES, 1, 2 * BO], s_desc.layout)
        wrow = e.to(gl.int32) * N + pid_n * WG * BO
        srow = e.to(gl.int32) * num_k
        scol = pid_n * 2 * WG * BO
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=WG)
        # (the argument tuples written out: a tuple assigned to a name would turn its constexprs into tensors)
        gl.warp_specialize([
            (_trio_default, (a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                             pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem,
                             w_smem, s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)),
            (_trio_worker, (1, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
                            end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem,
                            w_smem, s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)),
            (_trio_worker, (2, a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start,
                            end, pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem,
                            w_smem, s_smem, ready, empty, num_k, GATE_UP, BT, BX, STAGES, NARROW, ONE_MULTIPLY)),
        ], [4, 4], [WREGS, WREGS])
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


_WORDS = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
_SCALES = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)


def grouped(x, idx, gate_up_bias, tile, schedule):
    """What moe_hopper.moe_mxfp4_hopper sets up before its launches, with `schedule` (moe_schedule_fused, or
    reference_schedule where the kernels are only compiled): N, d, E, 2I, I, the assignments A, the tile (hopper_tile's
    choice unless given), its rows bt, the overflow box's rows bxk, the schedule, x's rows in grouped order, and the
    activations' [A, I] buffer."""
    N, d = x.shape
    E, two_i = gate_up_bias.shape
    A = N * idx.shape[-1]
    t = tile or mh.hopper_tile(A / E, E)
    s = schedule(idx, E, t.bt + t.bx)
    act = torch.empty(A, two_i // 2, device=x.device, dtype=x.dtype)
    return N, d, E, two_i, two_i // 2, A, t, t.bt, max(t.bx, 16), s, x.index_select(0, s.token), act


def moe_mxfp4_trio(x, idx, weight, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                   limit, alpha, tile: mh.HopperTile | None = None, stages: int = 4, one_multiply: bool = True,
                   maxnreg: int = 168):
    """moe_hopper.moe_mxfp4_hopper (its schedule and tile rows; no clusters) with these kernels, WG * 64 output
    features a program."""
    N, d, E, two_i, I, A, t, bt, bxk, s, xs, act = grouped(x, idx, gate_up_bias, tile, moe_schedule_fused)
    F = _WG * _BO
    narrow = bool(t.narrow) and bt >= 64
    kw = dict(BT=bt, BX=bxk, STAGES=stages, NARROW=narrow, ONE_MULTIPLY=bool(one_multiply), num_warps=4,
              maxnreg=maxnreg, WREGS=maxnreg)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as TD
    desc = lambda t_, box, lay: TD.from_tensor(t_, box, lay)  # noqa: E731
    _moe_trio_kernel[(cdiv(two_i, F), s.n_tiles)](
        desc(xs, [bt, 64], mh._rows_layout(bt)), desc(xs, [bxk, 64], mh._rows_layout(bxk)),
        desc(gate_up_blocks.view(torch.int32).view(E * two_i, d // 8), [_BO, 8], _WORDS),
        desc(gate_up_scales.view(E * (d // 64), 2 * two_i), [1, 2 * _BO], _SCALES),
        s.order, s.order, gate_up_bias, act, s.tile_expert, s.tile_start, s.tile_end, d, two_i,
        gate_up_bias.stride(0), act.stride(0), float(limit), float(alpha), GATE_UP=True, **kw)
    y = torch.empty(A, d, device=x.device, dtype=x.dtype)
    route_w = weight.reshape(-1).contiguous()
    _moe_trio_kernel[(cdiv(d, F), s.n_tiles)](
        desc(act, [bt, 64], mh._rows_layout(bt)), desc(act, [bxk, 64], mh._rows_layout(bxk)),
        desc(down_blocks.view(torch.int32).view(E * d, I // 8), [_BO, 8], _WORDS),
        desc(down_scales.view(E * (I // 64), 2 * d), [1, 2 * _BO], _SCALES),
        s.order, route_w, down_bias, y, s.tile_expert, s.tile_start, s.tile_end, I, d,
        down_bias.stride(0), y.stride(0), 0.0, 0.0, GATE_UP=False, **kw)
    return sum_slots(y, N, x.dtype)


def reference_schedule(idx, n_experts, block_m):
    """moe_schedule_fused's torch reference, with order and token in int32 as the kernel's (which cannot run on the
    CPU): what a compile-only launch takes."""
    from gptoss_viz.runtime.kernels.schedule import moe_schedule

    s = moe_schedule(idx, n_experts, block_m)
    return s.__class__(**{**s.__dict__, "order": s.order.int(), "token": s.token.int()})


def cpu_compile_args():
    """Compile-only launches for sm_90 (kernel_compat.py's driver), and one 1024-token 20b MoE call's arguments as
    CPU tensors: x, idx, weight, gate_up blocks, scales, bias, down blocks, scales, bias, limit, alpha."""
    from kernel_compat import _compile_only as co
    from kernel_compat import _Target
    from triton.runtime import driver

    from gptoss_viz.runtime.mxfp4 import to_hopper_order, to_hopper_scales

    driver.set_active(_Target(90))
    co()
    bf = torch.bfloat16
    T, d, E, k = 1024, 2880, 32, 4
    x = torch.randn(T, d).to(bf)
    idx = torch.rand(T, E).topk(k, -1).indices
    w = torch.rand(T, k).to(bf)
    gu = to_hopper_order(torch.zeros(E, 2 * d, d // 32, 16, dtype=torch.uint8))
    gus = to_hopper_scales(torch.full((E, 2 * d, d // 32), 120, dtype=torch.uint8))
    dn = to_hopper_order(torch.zeros(E, d, d // 32, 16, dtype=torch.uint8))
    dns = to_hopper_scales(torch.full((E, d, d // 32), 120, dtype=torch.uint8))
    return x, idx, w, gu, gus, torch.zeros(E, 2 * d).to(bf), dn, dns, torch.zeros(E, d).to(bf), 7.0, 1.702


def _compile_only():
    """Compile both launches for sm_90 on CPU tensors (kernel_compat.py's driver); print shared memory."""
    global moe_schedule_fused
    moe_schedule_fused = reference_schedule
    args = cpu_compile_args()
    for stages in (3, 4, 5):
        try:
            with torch.inference_mode():
                moe_mxfp4_trio(*args, stages=stages)
            kern = list(_moe_trio_kernel.device_caches[0][0].values())
            print(f"stages {stages}: ok;", [(kk.metadata.shared, kk.metadata.num_warps) for kk in kern])
        except Exception as e:
            print(f"stages {stages}: {type(e).__name__}: {str(e)[:2000]}")
            if os.environ.get("TRIO_RAISE"):
                raise


def compare(T: int, variants: dict, ref, kernels: tuple) -> dict:
    """name -> {equal (to ref), max_abs_diff, gate_up_ms, down_ms} for each variant (a function of no arguments),
    its two MoE kernels' GPU time (launches whose names contain one of `kernels`) under torch.profiler; an error
    is recorded and the next variant measured. Printed as it goes."""
    from moe_hopper import launches_ms

    got_all = {}
    for name, fn in variants.items():
        try:
            got = fn()
            torch.cuda.synchronize()
            v = {"equal": bool(torch.equal(got, ref)), "max_abs_diff": (got.float() - ref.float()).abs().max().item()}
            ks = [t_ for n, t_ in launches_ms(fn) if any(k in n for k in kernels)]
            v.update(gate_up_ms=ks[0], down_ms=ks[1])
        except Exception as e:  # record and go on
            v = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        got_all[name] = v
        print(T, name, v, flush=True)
    return got_all


def main() -> None:
    if sys.argv[1:2] == ["--compile"]:
        return _compile_only()
    from moe_hopper import header, hopper_layer
    from moe_variants import routed

    out = Path(sys.argv[1])
    counts = [int(a) for a in sys.argv[2:]] or [128, 512, 1024, 2048, 4096]
    cfg, mlp, gu, dn, gus, dns = hopper_layer()
    ex = mlp.experts
    g = torch.Generator(device="cuda").manual_seed(2)
    R = {**header(), "counts": []}
    for T in counts:
        x = torch.randn(T, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        tile = mh.hopper_tile(T * 4 / 32)
        rec = {"tokens": T, "tile": list(tile), "variants": {}}
        with torch.inference_mode():
            base = lambda: mh.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,  # noqa: E731
                                               ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=True)
            nocl = lambda: mh.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,  # noqa: E731
                                               ex.down_proj_bias, ex.limit, ex.alpha, tile=tile, one_multiply=True)
            ref = base()
            variants = {"product": base, "product, no clusters": nocl}
            for st in (3, 4, 5):
                variants[f"trio s{st}"] = (lambda st=st: moe_mxfp4_trio(
                    x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns, ex.down_proj_bias, ex.limit, ex.alpha,
                    tile=tile, stages=st))
            rec["variants"] = compare(T, variants, ref, ("moe_hopper", "moe_trio"))
        R["counts"].append(rec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
