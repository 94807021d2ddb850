"""The MXFP4 expert matmuls on Hopper (sm_90), written in Gluon (Triton's explicit-layout dialect): the decoded
weights are the *register* operand of wgmma, so no decoded value goes through shared memory.

moe.py's Triton kernels decode a weight slice, store it to shared memory, wait at a barrier for every warp and only
then run the tensor-core dot on it (Triton gives no control over that buffer); the Gluon kernels that double-buffered
it (benchmarks/experiments/gluon_moe.patch) were no faster. Here the product is computed transposed,
out^T [features, rows] = W [features, K] x^T [K, rows]: the weights are wgmma's A operand, which may live in
registers, and each thread decodes exactly the values of its own A fragment, from two 32-bit words a row a K step
(the packed weights are kept in mxfp4.to_hopper_order on the GPU, which puts a fragment's values in 8 consecutive
bytes and each decoded 32-bit register on one K pair). A step decodes into one of two register sets while the other
set's wgmma runs. Each K step's copies come by TMA into shared memory, STAGES deep: the activation rows (wgmma's
B), from rows already in expert-grouped order (x gathered once for gate_up; act is written in that order), and the
program's packed weight words, [64 rows, 32 bytes], which each thread then reads (its own fragment's 8 bytes a
row) from shared memory. Loading those words into registers straight from global memory, two steps ahead, cost a
program more than the decode's arithmetic (benchmarks/experiments/moe_ablate.py): 15% of gate_up's time at 1024
tokens. Their E8M0 scales (2 bytes a row a step, kept in mxfp4.to_hopper_scales on the GPU, where one step's
scales of 64 rows are 128 consecutive bytes) come in the same stage.

A program takes one tile of the schedule, at most BT + BX rows of one expert, times BO = 64 output features (or
2 BO with `HopperTile.halves` = 2: two m64 wgmmas a step on the same activation tiles, so that one step's copies,
barriers and waits serve twice the weights; what few rows an expert take, hopper_tiles.hopper_tile): the BT
rows in one wgmma of width BT, the BX overflow rows (if any) in a second, narrow one, so that an expert slightly over
BT rows (routing scatters the rows per expert around their mean) does not take a second tile that decodes its
weights again; a tile of at most BT/4 or BT/2 rows (an expert's last, or a rarely chosen expert's) runs a wgmma
only that wide, on the first rows of its stage (`HopperTile.narrow`; 1.9% less MoE time in the 20b forward at 1024
tokens, benchmarks/experiments/narrow_probe.py). Tiles of one row range launch next to each other (feature tiles
first): they share the activations in L2. With `HopperTile.cluster` = 2 (Triton 3.7's Gluon cluster API,
`CLUSTERS`; hopper_tiles.gate_up_cluster picks it for gate_up's 128+32 tiles), two programs on neighbouring
feature tiles form a cluster and CTA 0 multicasts each activation tile to both, so a tile leaves L2 once for 128
features. The two CTAs meet by a relaxed cluster arrive before each wgmma and a wait before the stage's refill, and
the epilogue converts its accumulator through the dead activation stages (68 KB of shared memory, 3 CTAs an SM).
On an H100 the 20b forward's GPU work (CUDA-graph replay) fell from 17.47 to 17.34 ms at 1024 tokens and from 32.41
to 31.64 at 2048, with the same logits (benchmarks/results/cluster_gate_up_ab_h100_s26.json).

Arithmetic: moe.py's (_decode_asm's bit trick, with its two multiplies, or with one where every scale of the layer
allows it: `one_multiply`; fp32 accumulation over the same K steps; the same epilogues), and on an H200 the outputs
were bit-identical to moe.py's kernels at every size measured (benchmarks/moe_hopper.py). Scope: bf16
activations, K and the expert width multiples of 64 (`supported`).
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from gptoss_viz.runtime.kernels import verify
from gptoss_viz.runtime.kernels.fused import Grouping, group_rows_fused, moe_schedule_fused
from gptoss_viz.runtime.kernels.hopper_tiles import HopperTile, duo_tile, gate_up_cluster, hopper_tile
from gptoss_viz.runtime.kernels.launch import Launcher, cdiv
from gptoss_viz.runtime.kernels.moe import _decode_asm, sum_slots

log = logging.getLogger(__name__)

# Gluon names that changed after Triton 3.6 (the version these kernels are verified on): the CTA barrier
# (gl.thread_barrier, gl.barrier from 3.7) and the TMA load into shared memory (tma.async_copy_global_to_shared,
# tma.async_load from 3.8; 3.9 keeps the old name only to raise). The same builtins on 3.6.
_cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
_tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared

if hasattr(gl.shared_memory_descriptor, "reinterpret"):  # Triton 3.9 on; before it, _reinterpret
    @gluon.jit
    def _view(smem, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
        """smem's bytes as another dtype, shape and layout."""
        return smem.reinterpret(dtype, shape, layout)
else:
    @gluon.jit
    def _view(smem, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
        """smem's bytes as another dtype, shape and layout."""
        return smem._reinterpret(dtype, shape, layout)


# clusters of CTAs (HopperTile.cluster) with Gluon's API as Triton 3.7 has it: 3.8 dropped sync_cluster_init and
# wants a shared-memory view the size of what it views (the epilogue's below is smaller); 3.9 changed more
CLUSTERS = hasattr(mbarrier, "sync_cluster_init")
if CLUSTERS:
    from triton.experimental.gluon.language.nvidia.hopper import cluster

    @gluon.jit
    def _cluster_ready(STAGES: gl.constexpr):
        """One mbarrier a stage in each CTA of the cluster, initialised, the initialisation seen cluster-wide."""
        ready = mbarrier.allocate_mbarrier(batch=STAGES)
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        mbarrier.sync_cluster_init()
        return ready

    @gluon.jit
    def _cluster_arrive():
        cluster.arrive(relaxed=True)

    @gluon.jit
    def _cluster_wait():
        cluster.wait()
else:  # (the JIT reads these names even where a constexpr branch leaves them out)
    @gluon.jit
    def _cluster_ready(STAGES: gl.constexpr):
        gl.static_assert(False, "clusters of CTAs need Triton 3.7 (moe_hopper.CLUSTERS)")

    @gluon.jit
    def _cluster_arrive():
        gl.static_assert(False, "clusters of CTAs need Triton 3.7 (moe_hopper.CLUSTERS)")

    @gluon.jit
    def _cluster_wait():
        gl.static_assert(False, "clusters of CTAs need Triton 3.7 (moe_hopper.CLUSTERS)")


BO = 64  # output features a program: one m64 wgmma (128 took 242 registers a thread and ran 2-16% slower)


# one 32-bit word of four packed bytes ($8) and their shared scale ($9) -> eight bf16 ($0-$7, in pairs: the low
# nibbles of bytes 0 and 1, of bytes 2 and 3, then the high nibbles), each pair computed in one 32-bit register;
# with one bf16 multiply (exact for scales 0..128 only: what every layer of a trained checkpoint holds) or two
_DECODE_WORD_ONE_MULTIPLY = gl.constexpr(_decode_asm(one_multiply=True, shared_scale=True))
_DECODE_WORD_TWO_MULTIPLIES = gl.constexpr(_decode_asm(one_multiply=False, shared_scale=True))


@gluon.constexpr_function
def _cga(CL, rank, dim):
    """The cga_layout that splits dimension `dim` of a rank-`rank` tensor across a cluster of CL CTAs (CL 1: none;
    a basis counts CTA tiles, not elements)."""
    CL = getattr(CL, "value", CL)
    if CL == 1:
        return []
    basis = [0] * rank
    basis[dim] = 1
    return [basis]


@gluon.constexpr_function
def _acc_layout(NB, CL):
    """The wgmma accumulator's layout for [CL * BO features, NB rows], the features split across the cluster."""
    NB = getattr(NB, "value", NB)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NB, 16],
                                     cga_layout=_cga(CL, 2, 0))


@gluon.constexpr_function
def _blocked(size_per_thread, threads_per_warp, warps_per_cta, order, CL, dim):
    """gl.BlockedLayout(...), dimension `dim` split across a cluster of CL CTAs."""
    return gl.BlockedLayout(size_per_thread, threads_per_warp, warps_per_cta, order,
                            cga_layout=_cga(CL, len(order), dim))


@gluon.constexpr_function
def _plain(order, CL):
    """An unswizzled shared layout of order `order`, dimension 0 split across a cluster of CL CTAs."""
    CL = getattr(CL, "value", CL)
    return gl.SwizzledSharedLayout(1, 1, 1, order, cga_layout=_cga(CL, len(order), 0))


@gluon.constexpr_function
def _word_layout(BO, CL=1):
    """Layout of one step's packed weights as 32-bit words [BO, 4 (lane group t), 2 (block p)] (word 2t + p of the
    row's 8 in mxfp4.to_hopper_order): each thread holds the two words (8 bytes) of its A fragment for each of its
    rows: wgmma's A-operand layout (gl.to_linear_layout of DotOperandLayout(0, ACC, 2) for [64, 64]) with the K
    bits inside a word dropped: rows 0-2 on lanes, 3 in a register, 4-5 on warps."""
    BO = getattr(BO, "value", BO)
    CL = getattr(CL, "value", CL)
    assert BO == 64 * CL, "one m64 wgmma a CTA"
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0]], lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[[64, 0, 0]] if CL == 2 else [], shape=[BO, 4, 2])


@gluon.jit
def _decode(word, s, BO: gl.constexpr, AL: gl.constexpr, WL: gl.constexpr, ONE_MULTIPLY: gl.constexpr):
    """words [BO, 4 (t), 2 (p)] (mxfp4.to_hopper_order) and scales [BO, 1, 2] -> the weights [BO, 64] bf16 in
    wgmma's A-operand layout AL: every 32-bit register of the decode is already one A register (a K pair).
    ONE_MULTIPLY: the decode with one bf16 multiply, exact only if every scale is at most 128."""
    s32 = s + gl.zeros([BO, 4, 2], gl.int32, WL)
    asm: gl.constexpr = _DECODE_WORD_ONE_MULTIPLY if ONE_MULTIPLY else _DECODE_WORD_TWO_MULTIPLIES
    h0, h1, h2, h3, h4, h5, h6, h7 = gl.inline_asm_elementwise(
        asm, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [word, s32], dtype=(gl.bfloat16,) * 8, is_pure=True,
        pack=1)
    # pair (h0, h1): K = 32p + 2t + {0, 1}; (h2, h3): + 8; (h4, h5): + 16; (h6, h7): + 24
    w = gl.join(gl.join(gl.join(h0, h1), gl.join(h2, h3)), gl.join(gl.join(h4, h5), gl.join(h6, h7)))
    w = gl.permute(w, (0, 2, 5, 4, 1, 3))  # [BO, t, p, n, j, y] -> [BO, p, y, j, t, n]
    w = gl.reshape(w, [BO, 64])  # column 32p + 16y + 8j + 2t + n
    return gl.convert_layout(w, AL)


@gluon.jit
def _issue_tiles(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                 kstep, num_k, STAGES: gl.constexpr, BT: gl.constexpr, EXTRA: gl.constexpr, CL: gl.constexpr = 1):
    """TMA copies of step kstep into its stage, all signalling the stage's barrier (nothing past the last step):
    its activation rows, [BT, 64] from row start (zero past the array's end) and with EXTRA the next BX rows too,
    the program's packed weight words, [BO rows from wrow, 8 words], and their scales ([2 BO] bytes at row
    srow + kstep, column scol of s_desc's view of the scales in mxfp4.to_hopper_scales' order)."""
    st = kstep % STAGES
    live = kstep < num_k
    # (CL 2: each CTA gets its half of the weights and scales, and all of the rows, multicast by CTA 0)
    weights: gl.constexpr = (w_desc.block_type.nbytes + s_desc.block_type.nbytes) // CL
    if EXTRA:
        mbarrier.expect(ready.index(st), a_desc.block_type.nbytes + x_desc.block_type.nbytes + weights, pred=live)
        if CL == 2:  # (Triton 3.6's copy has no multicast argument)
            _tma_load(x_desc, [start + BT, kstep * 64], ready.index(st), x_smem.index(st), pred=live, multicast=True)
        else:
            _tma_load(x_desc, [start + BT, kstep * 64], ready.index(st), x_smem.index(st), pred=live)
    else:
        mbarrier.expect(ready.index(st), a_desc.block_type.nbytes + weights, pred=live)
    _tma_load(w_desc, [wrow, kstep * 8], ready.index(st), w_smem.index(st), pred=live)
    _tma_load(s_desc, [srow + kstep, scol], ready.index(st), s_smem.index(st), pred=live)
    if CL == 2:
        _tma_load(a_desc, [start, kstep * 64], ready.index(st), a_smem.index(st), pred=live, multicast=True)
    else:
        _tma_load(a_desc, [start, kstep * 64], ready.index(st), a_smem.index(st), pred=live)


@gluon.jit
def _smem_words(w_smem, st, h: gl.constexpr, BO: gl.constexpr, WL: gl.constexpr, CL: gl.constexpr = 1):
    """Stage st's weight words of the program's h-th BO rows as [BO, 4 (t), 2 (p)] int32 in WL: the TMA box
    [HALVES * BO, 8] is row-major and unswizzled, so word 2t + p of row r is at 8r + 2t + p, its offset in a plain
    [BO, 4, 2] view; a warp's reads cover 8 rows' 256 consecutive bytes."""
    PLAIN: gl.constexpr = _plain([2, 1, 0], CL)
    rows: gl.constexpr = w_smem.shape[1]
    words = _view(w_smem.index(st), gl.int32, [rows, 4, 2], PLAIN)
    if rows != BO:
        words = words.slice(h * BO, BO)
    return words.load(WL)


@gluon.jit
def _smem_scales(s_smem, st, h: gl.constexpr, BO: gl.constexpr, WL: gl.constexpr, CL: gl.constexpr = 1):
    """Stage st's scales of the h-th BO rows as [BO, 1, 2] int32 (row r's two at 2r, 2r + 1), broadcastable
    against WL."""
    PLAIN: gl.constexpr = _plain([1, 0], CL)
    rows: gl.constexpr = s_smem.shape[2] // 2
    view = _view(s_smem.index(st), gl.uint8, [rows, 2], PLAIN)
    if rows != BO:
        view = view.slice(h * BO, BO)
    s = view.load(gl.SliceLayout(1, WL))
    return gl.expand_dims(s.to(gl.int32), 1)


@gluon.jit
def _step(k, w0, w1, acc0, acc1, acc20, acc21, a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem,
          x_smem, w_smem, s_smem, ready, num_k, USE_ACC: gl.constexpr, STAGES: gl.constexpr, BT: gl.constexpr,
          EXTRA: gl.constexpr, AL2: gl.constexpr, NB: gl.constexpr, HALVES: gl.constexpr, CL: gl.constexpr = 1):
    """K step k on decoded weights w0 (and with HALVES = 2, w1: the program's second BO rows; its stage already
    waited for): wait for step k-1's wgmmas in every warp (its stage is then free for the copies of step
    k + STAGES - 1), issue this step's wgmma(s) for each half: the first NB of the stage's BT rows (NB < BT: a
    narrow tile) into acc0 / acc1, with EXTRA the BX rows after them too into acc20 / acc21. Both halves take the
    same activation tiles, so a step's copies, barriers and waits serve twice the weights."""
    if EXTRA:
        if HALVES == 2:
            acc0, acc1, acc20, acc21 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc1, acc20, acc21])
        else:
            acc0, acc20 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc20])
    else:
        if HALVES == 2:
            acc0, acc1 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc1])
        else:
            acc0 = hopper.warpgroup_mma_wait(0, deps=[acc0])
    if CL == 2:  # this CTA is done with step k-1's stage; CTA 0 multicasts into it once both are (below)
        _cluster_arrive()
    else:
        _cta_barrier()
    if CL == 1:
        _issue_tiles(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                     ready, k + STAGES - 1, num_k, STAGES, BT, EXTRA, CL)
    st = k % STAGES
    if NB < BT:
        rows = a_smem.index(st).slice(0, NB).permute((1, 0))
    else:
        rows = a_smem.index(st).permute((1, 0))
    acc0 = hopper.warpgroup_mma(w0, rows, acc0, use_acc=USE_ACC, is_async=True)
    if HALVES == 2:
        acc1 = hopper.warpgroup_mma(w1, rows, acc1, use_acc=USE_ACC, is_async=True)
    if EXTRA:
        more = x_smem.index(st).permute((1, 0))
        acc20 = hopper.warpgroup_mma(gl.convert_layout(w0, AL2), more, acc20, use_acc=USE_ACC, is_async=True)
        if HALVES == 2:
            acc21 = hopper.warpgroup_mma(gl.convert_layout(w1, AL2), more, acc21, use_acc=USE_ACC, is_async=True)
    if CL == 2:  # the refill once this step's wgmmas are issued: the other CTA has had them to arrive
        # (a relaxed arrive: gl.barrier(cluster=True)'s GPU-wide memory barrier doubled the kernels' time)
        _cluster_wait()
        _issue_tiles(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                     ready, k + STAGES - 1, num_k, STAGES, BT, EXTRA, CL)
    return acc0, acc1, acc20, acc21


@gluon.jit
def _decode_step(k, w_smem, s_smem, ready, STAGES: gl.constexpr, BO: gl.constexpr, AL: gl.constexpr,
                 WL: gl.constexpr, HALVES: gl.constexpr, ONE_MULTIPLY: gl.constexpr, CL: gl.constexpr = 1):
    """Wait for step k's stage, decode its weight words with its scales: (first BO rows, second BO rows) with
    HALVES = 2, else (the BO rows, the same again)."""
    st = k % STAGES
    mbarrier.wait(ready.index(st), (k // STAGES) & 1)
    w0 = _decode(_smem_words(w_smem, st, 0, BO, WL, CL), _smem_scales(s_smem, st, 0, BO, WL, CL), BO, AL, WL,
                 ONE_MULTIPLY)
    if HALVES == 2:
        w1 = _decode(_smem_words(w_smem, st, 1, BO, WL), _smem_scales(s_smem, st, 1, BO, WL), BO, AL, WL,
                     ONE_MULTIPLY)
    else:
        w1 = w0
    return w0, w1


@gluon.jit
def _k_loop(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, num_k,
            BO: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr, EXTRA: gl.constexpr,
            NB: gl.constexpr, HALVES: gl.constexpr, ONE_MULTIPLY: gl.constexpr, CL: gl.constexpr = 1):
    """The K loop: [BO, NB] (the first NB of the BT rows a stage holds; and with EXTRA [BO, BX], the next BX
    rows) fp32 accumulators, for each of the program's HALVES sets of BO weight rows. A step decodes into one of
    two register sets (wa, wb) while the other set's wgmma runs (with one set, the decode would overwrite
    registers the running wgmma still reads)."""
    ACC: gl.constexpr = _acc_layout(NB, CL)
    ACC2: gl.constexpr = _acc_layout(BX, CL)
    AL: gl.constexpr = gl.DotOperandLayout(0, ACC, 2)
    AL2: gl.constexpr = gl.DotOperandLayout(0, ACC2, 2)
    WL: gl.constexpr = _word_layout(BO, CL)
    for i in gl.static_range(STAGES - 1):
        _issue_tiles(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                     i, num_k, STAGES, BT, EXTRA, CL)
    acc0 = gl.zeros([BO, NB], gl.float32, ACC)
    acc20 = gl.zeros([BO, BX], gl.float32, ACC2)
    acc1 = acc0
    acc21 = acc20
    # step 0, peeled: use_acc=False on a zero accumulator (zeros flowing into the loop made ptxas serialise)
    wa0, wa1 = _decode_step(0, w_smem, s_smem, ready, STAGES, BO, AL, WL, HALVES, ONE_MULTIPLY, CL)
    acc0, acc1, acc20, acc21 = _step(0, wa0, wa1, acc0, acc1, acc20, acc21, a_desc, x_desc, w_desc, s_desc, start,
                                     wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, num_k, False, STAGES,
                                     BT, EXTRA, AL2, NB, HALVES, CL)
    # two steps an iteration, decoding into two register sets (wa, wb): the decode of one step overlaps the
    # other's wgmma
    for k in range(1, num_k - 1, 2):
        wb0, wb1 = _decode_step(k, w_smem, s_smem, ready, STAGES, BO, AL, WL, HALVES, ONE_MULTIPLY, CL)
        acc0, acc1, acc20, acc21 = _step(k, wb0, wb1, acc0, acc1, acc20, acc21, a_desc, x_desc, w_desc, s_desc,
                                         start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, num_k,
                                         True, STAGES, BT, EXTRA, AL2, NB, HALVES, CL)
        wa0, wa1 = _decode_step(k + 1, w_smem, s_smem, ready, STAGES, BO, AL, WL, HALVES, ONE_MULTIPLY, CL)
        acc0, acc1, acc20, acc21 = _step(k + 1, wa0, wa1, acc0, acc1, acc20, acc21, a_desc, x_desc, w_desc, s_desc,
                                         start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, num_k,
                                         True, STAGES, BT, EXTRA, AL2, NB, HALVES, CL)
    if num_k % 2 == 0:  # one step left
        wb0, wb1 = _decode_step(num_k - 1, w_smem, s_smem, ready, STAGES, BO, AL, WL, HALVES, ONE_MULTIPLY, CL)
        acc0, acc1, acc20, acc21 = _step(num_k - 1, wb0, wb1, acc0, acc1, acc20, acc21, a_desc, x_desc, w_desc,
                                         s_desc, start, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                                         num_k, True, STAGES, BT, EXTRA, AL2, NB, HALVES, CL)
    if EXTRA:
        if HALVES == 2:
            acc0, acc1, acc20, acc21 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc1, acc20, acc21])
        else:
            acc0, acc20 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc20])
    else:
        if HALVES == 2:
            acc0, acc1 = hopper.warpgroup_mma_wait(0, deps=[acc0, acc1])
        else:
            acc0 = hopper.warpgroup_mma_wait(0, deps=[acc0])
    return acc0, acc1, acc20, acc21


@gluon.jit
def _epilogue(acc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, pid_n, N, stride_biase, stride_om,
              limit, alpha, a_smem, GATE_UP: gl.constexpr, BT: gl.constexpr, BO: gl.constexpr, CL: gl.constexpr = 1):
    """acc [BO features, BT rows] -> gate_up: + bias, clamped SwiGLU, to rows start.. of out [A, N/2]; down: + bias,
    times the routing weight (in fp32), to each row's assignment row of out [A, N] in out's dtype. With CL 2 the
    layout change goes through a_smem (the activation stages, dead by now): Triton 3.7.1 sizes a conversion's
    scratch for the whole cluster's tile, 32 KB a CTA, which left room for 2 CTAs an SM instead of 3."""
    NW: gl.constexpr = gl.num_warps()
    acc = gl.permute(acc, (1, 0))  # [BT, BO]
    if CL == 2:
        SPLIT1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0], cga_layout=[[0, 1]])
        buf = _view(a_smem, gl.float32, [BT, BO], SPLIT1)  # (a CTA's [BT, 64] fp32: 32 KB of its 48 at most)
        _cta_barrier()
        buf.store(acc)
        _cta_barrier()
    if GATE_UP:
        EL: gl.constexpr = _blocked([1, 2], [4, 8], [NW, 1], [1, 0], CL, 1)
        if CL == 2:
            h = buf.load(EL)
        else:
            h = gl.convert_layout(acc, EL)
        rn = pid_n * BO + gl.arange(0, BO, layout=gl.SliceLayout(0, EL))
        bias = gl.load(bias_ptr + e * stride_biase + rn, mask=rn < N, other=0.0).to(gl.float32)
        h = h + gl.expand_dims(bias, 0)
        gate, up = gl.split(h.reshape([BT, BO // 2, 2]))
        gate = gl.minimum(gate, limit)  # clamped above only
        up = gl.minimum(gl.maximum(up, -limit), limit)
        act = gate * (1.0 / (1.0 + gl.exp(-(alpha * gate)))) * (up + 1.0)
        OL: gl.constexpr = _blocked([1, 1], [4, 8], [NW, 1], [1, 0], CL, 1)
        act = gl.convert_layout(act, OL)
        ro = start + gl.arange(0, BT, layout=gl.SliceLayout(1, OL))
        ri = pid_n * (BO // 2) + gl.arange(0, BO // 2, layout=gl.SliceLayout(0, OL))
        ptrs = out_ptr + gl.expand_dims(ro.to(gl.int64) * stride_om, 1) + gl.expand_dims(ri, 0)
        gl.store(ptrs, act.to(out_ptr.dtype.element_ty),
                 mask=gl.expand_dims(ro < end, 1) & gl.expand_dims(ri < N // 2, 0))
    else:
        OL2: gl.constexpr = _blocked([1, 4], [4, 8], [NW, 1], [1, 0], CL, 1)
        if CL == 2:
            y = buf.load(OL2)
        else:
            y = gl.convert_layout(acc, OL2)
        ro = start + gl.arange(0, BT, layout=gl.SliceLayout(1, OL2))
        rn = pid_n * BO + gl.arange(0, BO, layout=gl.SliceLayout(0, OL2))
        m_o = ro < end
        bias = gl.load(bias_ptr + e * stride_biase + rn, mask=rn < N, other=0.0).to(gl.float32)
        dest = gl.load(order_ptr + ro, mask=m_o, other=0).to(gl.int64)  # assignment t * k + j of each row
        rw = gl.load(route_w_ptr + dest, mask=m_o, other=0.0).to(gl.float32)
        y = (y + gl.expand_dims(bias, 0)) * gl.expand_dims(rw, 1)
        ptrs = out_ptr + gl.expand_dims(dest * stride_om, 1) + gl.expand_dims(rn, 0)
        gl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(m_o, 1) & gl.expand_dims(rn < N, 0))


@gluon.jit
def _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, pid_n, N,
          stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready, num_k,
          GATE_UP: gl.constexpr, BO: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr, STAGES: gl.constexpr,
          EXTRA: gl.constexpr, NB: gl.constexpr, HALVES: gl.constexpr, ONE_MULTIPLY: gl.constexpr,
          CL: gl.constexpr = 1):
    """One tile: the K loop on its first NB rows (with EXTRA, BT rows and the BX after them) and the epilogue(s),
    for each of the program's HALVES sets of BO output features (feature tiles HALVES * pid_n + h of BO)."""
    acc0, acc1, acc20, acc21 = _k_loop(a_desc, x_desc, w_desc, s_desc, start, wrow, srow, scol, a_smem, x_smem,
                                       w_smem, s_smem, ready, num_k, BO, BT, BX, STAGES, EXTRA, NB, HALVES,
                                       ONE_MULTIPLY, CL)
    f = pid_n * HALVES
    if EXTRA:
        _epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, start + BT, f, N, stride_biase,
                  stride_om, limit, alpha, a_smem, GATE_UP, BT, BO, CL)
        _epilogue(acc20, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start + BT, end, f, N, stride_biase,
                  stride_om, limit, alpha, a_smem, GATE_UP, BX, BO, CL)
        if HALVES == 2:
            _epilogue(acc1, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, start + BT, f + 1, N, stride_biase,
                      stride_om, limit, alpha, a_smem, GATE_UP, BT, BO, CL)
            _epilogue(acc21, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start + BT, end, f + 1, N, stride_biase,
                      stride_om, limit, alpha, a_smem, GATE_UP, BX, BO, CL)
    else:
        _epilogue(acc0, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, f, N, stride_biase,
                  stride_om, limit, alpha, a_smem, GATE_UP, NB, BO, CL)
        if HALVES == 2:
            _epilogue(acc1, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, f + 1, N, stride_biase,
                      stride_om, limit, alpha, a_smem, GATE_UP, NB, BO, CL)


@gluon.jit
def _moe_hopper_kernel(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr,
                   tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                   K, N, stride_biase, stride_om,
                   limit, alpha,
                   GATE_UP: gl.constexpr, TOP_K: gl.constexpr, BT: gl.constexpr, BX: gl.constexpr,
                   BO: gl.constexpr, STAGES: gl.constexpr, NARROW: gl.constexpr, HALVES: gl.constexpr,
                   ONE_MULTIPLY: gl.constexpr, CL: gl.constexpr = 1):
    """GATE_UP: out[row] = clamped SwiGLU(x[token(row)] W1^T + b1) for the grouped rows (out [A, N/2]; a_desc over
    x's rows in grouped order); else: out[assignment(row)] = (act[row] W2^T + b2) * routing weight (out [A, N]
    fp32; a_desc over act). A program: one tile of the schedule (up to BT + BX grouped rows of one expert; the BX
    overflow rows get their own small wgmma, so an expert a little over BT rows does not take a second tile that
    decodes its weights again) times HALVES * BO weight rows (output features; each BO its own m64 wgmma on the
    same activation tiles)."""
    gl.static_assert(gl.num_warps() == 4, "one warp group")
    pid_n = gl.program_id(0)  # feature tiles first: programs next to each other share the rows
    pid_m = gl.program_id(1)
    start = gl.load(tile_start_ptr + pid_m)
    end = gl.load(tile_end_ptr + pid_m)
    if start < end:  # else a spare tile of the static grid
        e = gl.load(tile_expert_ptr + pid_m).to(gl.int64)
        num_k = K // 64
        a_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, 64], a_desc.layout)
        x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BX, 64], x_desc.layout)
        w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, HALVES * BO, 8], w_desc.layout)
        s_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, 1, 2 * HALVES * BO], s_desc.layout)
        # the program's first weight row in w_desc's [E * N, K / 8] (rows past an expert's N, in a last program
        # whose second half lies past it, are the next expert's or zeros past the end: computed, never stored)
        wrow = e.to(gl.int32) * N + pid_n * HALVES * BO
        srow = e.to(gl.int32) * num_k  # its expert's first step in s_desc's [E * K / 64, 2 N]
        scol = pid_n * 2 * HALVES * BO
        if CL == 2:  # one barrier a stage in each CTA of the cluster
            ready = _cluster_ready(STAGES)
        else:
            ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(STAGES):
                mbarrier.init(ready.index(i), count=1)
        rows = end - start
        if rows > BT:  # BT rows and up to BX more
            _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end, pid_n,
                  N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem, ready,
                  num_k, GATE_UP, BO, BT, BX, STAGES, True, BT, HALVES, ONE_MULTIPLY, CL)
        elif NARROW:  # the wgmma as wide as the tile's rows need: BT // 4, BT // 2 or BT (all >= 16)
            if rows <= BT // 4:
                _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                      pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                      ready, num_k, GATE_UP, BO, BT, BX, STAGES, False, BT // 4, HALVES, ONE_MULTIPLY, CL)
            elif rows <= BT // 2:
                _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                      pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                      ready, num_k, GATE_UP, BO, BT, BX, STAGES, False, BT // 2, HALVES, ONE_MULTIPLY, CL)
            else:
                _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                      pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                      ready, num_k, GATE_UP, BO, BT, BX, STAGES, False, BT, HALVES, ONE_MULTIPLY, CL)
        else:
            _tile(a_desc, x_desc, w_desc, s_desc, order_ptr, route_w_ptr, bias_ptr, out_ptr, e, start, end,
                  pid_n, N, stride_biase, stride_om, limit, alpha, wrow, srow, scol, a_smem, x_smem, w_smem, s_smem,
                  ready, num_k, GATE_UP, BO, BT, BX, STAGES, False, BT, HALVES, ONE_MULTIPLY, CL)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))


_moe_hopper_launch = Launcher(_moe_hopper_kernel)


# the shared-memory layouts of a step's weight words, [BO rows, 8 int32], and their scales, [1, 2 BO] bytes:
# row-major (TMA without swizzling)
_WORDS = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
_SCALES = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)
# the same for a cluster of two CTAs (cluster=2): each CTA holds the words of its half of the rows and their scales
_WORDS_CL = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2, cga_layout=[[1, 0]])
_SCALES_CL = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2, cga_layout=[[0, 1]])


@functools.lru_cache(maxsize=None)
def _rows_layout(rows: int, cluster: int = 1):
    """The shared-memory layout of a [rows, 64] bf16 TMA box (built once: ~5 us a call on the host); with cluster
    2, held whole by both CTAs of a cluster (filled by one multicast copy)."""
    if cluster == 2:
        return gl.NVMMASharedLayout.get_default_for([rows, 64], gl.bfloat16, cga_layout=[[0, 0]])
    return gl.NVMMASharedLayout.get_default_for([rows, 64], gl.bfloat16)


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


_ROWS_FIELDS = {}  # (shape, rows, dtype, id(layout)) -> the fields but the base of a descriptor from_tensor checked


def _rows_descriptor(t: torch.Tensor, rows: int, layout):
    """TensorDescriptor.from_tensor(t, [rows, 64], layout) for a contiguous 2-D activation tensor t, built from
    the fields of one that from_tensor made for the same shape, dtype, box and layout, with t as its base:
    from_tensor's checks and dataclass construction cost ~4-5 us of host time, four a call, and depend only on
    those and on the base's 16-byte alignment, which is checked here. (No tensor is kept.)"""
    key = (t.shape, rows, t.dtype, id(layout))  # (the entry holds the layout: its id is not reused meanwhile)
    fields = _ROWS_FIELDS.get(key)
    if fields is None or t.data_ptr() % 16 or not t.is_contiguous():
        desc = TensorDescriptor.from_tensor(t, [rows, 64], layout)
        if t.is_contiguous():
            if len(_ROWS_FIELDS) >= 256:
                _ROWS_FIELDS.clear()
            _ROWS_FIELDS[key] = {n: v for n, v in desc.__dict__.items() if n != "base"}
        return desc
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(fields)
    desc.base = t
    return desc


def _weight_descriptor(cache: dict | None, t: torch.Tensor, shape: tuple[int, int], block: list[int], layout):
    """A TMA descriptor of the packed weights `t` read as `shape` (the blocks as int32 words, d / 8 or I / 8 a
    row; the scales as bytes), from `cache` while its entry for this shape and box describes t's memory. One entry
    a weight and box (the four weights' shapes always differ): a weight that moves replaces its entry."""
    slot = (shape, tuple(block), layout)
    ptr = t.data_ptr()
    hit = None if cache is None else cache.get(slot)
    if hit is not None and hit[0] == ptr:
        return hit[1]
    words = t.view(torch.int32) if layout.element_bitwidth == 32 else t
    desc = TensorDescriptor.from_tensor(words.view(shape), block, layout)
    if cache is not None:
        cache[slot] = (ptr, desc)
    return desc


def schedule_rows(n_assignments: int, n_experts: int) -> int:
    """The rows a schedule tile holds (bt + bx of hopper_tile's choice) when moe_mxfp4_hopper runs n_assignments
    (tokens x k) over n_experts without a `tile`: what a `grouping` for it must be made for."""
    t = hopper_tile(n_assignments / n_experts, n_experts)
    return t.bt + t.bx


def supported(device: torch.device, dtype: torch.dtype, d: int, I: int) -> bool:
    """Whether these kernels run activations of `dtype` [*, d] on `device` with expert width I: bf16 on an sm_90
    GPU (wgmma; other GPUs take moe.py's kernels), d and I multiples of 64 (one K step)."""
    return (device.type == "cuda" and dtype == torch.bfloat16 and _capability(device) == (9, 0)
            and d % 64 == 0 and I % 64 == 0)


class _TileLaunch(NamedTuple):
    """What a launch of tile t needs: the output features a program (a cluster's with cluster 2), the shared-memory
    layouts of its row boxes (BT, BX rows), weight words and scales, the kernel's tile arguments, and with `duo`
    the module of the kernels that run it (moe_hopper_duo), else None."""
    features: int
    rows: object
    rows_x: object
    words: object
    scales: object
    kwargs: dict
    duo: object = None


def _tile_launch(t: HopperTile, bxk: int) -> _TileLaunch:
    if t.duo:  # (imported here: moe_hopper_duo builds on this module)
        from gptoss_viz.runtime.kernels import moe_hopper_duo

        kwargs = {"STAGES": t.stages, "LREGS": moe_hopper_duo.LOADER_REGS, "num_warps": 8}
        if t.maxnreg:
            kwargs["maxnreg"] = t.maxnreg
        return _TileLaunch(moe_hopper_duo.F.value, _rows_layout(t.bt), _rows_layout(bxk), _WORDS, _SCALES, kwargs,
                           moe_hopper_duo)
    features = t.halves * BO * t.cluster
    kwargs = {"BO": BO * t.cluster, "STAGES": t.stages, "HALVES": t.halves,
              # (Gluon slices no tile that a cluster shares)
              "NARROW": bool(t.narrow) and t.bt >= 64 and t.cluster == 1}
    if t.maxnreg:
        kwargs["maxnreg"] = t.maxnreg
    if t.cluster == 2:
        kwargs.update(CL=2, num_ctas=2)
        return _TileLaunch(features, _rows_layout(t.bt, 2), _rows_layout(bxk, 2), _WORDS_CL, _SCALES_CL, kwargs)
    return _TileLaunch(features, _rows_layout(t.bt), _rows_layout(bxk), _WORDS, _SCALES, kwargs)


@functools.lru_cache(maxsize=256)
def _launch_plan(A: int, E: int, tile: HopperTile | None, rule, cluster_rule, clusters: bool,
                 duo_rule) -> tuple[_TileLaunch, _TileLaunch, int, int, int]:
    """(gate_up's launch, down's launch, bt, bx, bxk) for A assignments over E experts: the tile rule's, the duo
    rule's and the cluster rule's choice (hopper_tile, duo_tile, gate_up_cluster: passed in, so that a probe that
    replaces them here is not served a plan of the old ones), or `tile` for both, checked; kept per arguments, a
    few microseconds of host time a layer otherwise."""
    down_tile = tile or duo_rule(rule(A / E, E), clusters)  # (the duo kernels need Triton 3.7, as clusters do)
    gate_up_tile = tile or cluster_rule(down_tile, clusters)
    for t in (gate_up_tile, down_tile):
        if t.halves not in (1, 2) or (t.halves == 2 and t.bt < 32):
            # (Triton 3.6 aborts compiling two halves at 16-row tiles: an assertion in its MMA layout conversion)
            raise ValueError(f"HopperTile.halves must be 1, or 2 with bt >= 32; got halves={t.halves}, bt={t.bt}")
        if t.cluster not in (1, 2) or (t.cluster == 2 and (t.halves != 1 or not clusters)):
            raise ValueError(f"HopperTile.cluster must be 1, or 2 with halves 1 on Triton 3.7; got "
                             f"cluster={t.cluster}, halves={t.halves}, Triton {triton.__version__}")
        if t.duo and (t.halves != 1 or t.cluster != 1 or t.narrow or not clusters):
            raise ValueError(f"HopperTile.duo needs halves 1, cluster 1, narrow off and Triton 3.7; got halves="
                             f"{t.halves}, cluster={t.cluster}, narrow={t.narrow}, Triton {triton.__version__}")
    bt, bx = down_tile.bt, down_tile.bx  # (gate_up_cluster keeps them: one schedule for both launches)
    bxk = max(bx, 16)  # the overflow path is compiled in any case; with bx = 0 no tile takes it
    return _tile_launch(gate_up_tile, bxk), _tile_launch(down_tile, bxk), bt, bx, bxk


def moe_mxfp4_hopper(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                     gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                     down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
                     limit: float, alpha: float, tile: HopperTile | None = None,
                     residual: torch.Tensor | None = None, one_multiply: bool = False,
                     descriptors: dict | None = None, norm: tuple[torch.Tensor, float] | None = None,
                     slot_dtype: torch.dtype | None = None, grouping: Grouping | None = None):
    """moe.moe_mxfp4 on Hopper: x [N, d] bf16, idx/weight [N, k] -> [N, d] bf16. The blocks in
    mxfp4.to_hopper_order (blocks [E, 2I, d/32, 16] / [E, d, I/32, 16] uint8) and the scales in
    mxfp4.to_hopper_scales ([E, 2I, d/32] / [E, d, I/32] uint8), the biases as the checkpoint stores them. `tile`
    overrides hopper_tile's and gate_up_cluster's choice for both launches (sweeps and tests); with `residual`,
    (out, residual + out), and with `norm` (weight, eps) as well (out, residual + out, its RMSNorm)
    (moe.sum_slots).
    `one_multiply`: decode with one bf16 multiply a register instead of two, which is exact only if no scale is
    above 128 (weights of magnitude < 12: any trained checkpoint); the caller vouches for that
    (gptoss.Experts.one_multiply, checked once when the blocks are re-arranged). Both give the same bits there.
    `descriptors`: a dict the caller keeps with the weights (gptoss.Experts) in which the weights' TMA descriptors
    are built once and reused while the weights stay where they are (~5 us of host time each, four a call).
    `slot_dtype`: the dtype of the k weighted expert outputs a token, summed by sum_slots (default x's, as
    moe.moe_mxfp4's; torch.float32 for comparisons).
    `grouping`: idx's assignments already grouped by fused.router_route_fused(..., block_m=schedule_rows(N * k, E))
    in the launch that chose them; then one launch (fused.group_rows_fused) gathers the rows and completes the
    schedule, where two (moe_schedule_fused, the gather) did."""
    N, d = x.shape
    k = idx.shape[-1]
    E, two_i = gate_up_bias.shape
    I = two_i // 2
    A = N * k
    if not supported(x.device, x.dtype, d, I):
        raise ValueError("the Hopper MoE kernels need bf16 activations on sm_90 and d, I multiples of 64")
    for name, t in (("gate_up_proj_blocks", gate_up_blocks), ("down_proj_blocks", down_blocks),
                    ("gate_up_proj_scales", gate_up_scales), ("down_proj_scales", down_scales)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    g_up, g_down, bt, bx, bxk = _launch_plan(A, E, tile, hopper_tile, gate_up_cluster, CLUSTERS, duo_tile)
    # the rows in expert-grouped order, so that a tile's activations are one TMA box of consecutive rows
    if grouping is None:
        s = moe_schedule_fused(idx, E, bt + bx)
        xs = x.index_select(0, s.token)
    elif grouping.block_m != bt + bx:
        raise ValueError(f"grouping made for tiles of {grouping.block_m} rows; these kernels take {bt + bx}")
    else:
        xs, s = group_rows_fused(x, idx, grouping)
    act = torch.empty(A, I, device=x.device, dtype=x.dtype)
    g = g_up
    descs = (_rows_descriptor(xs, bt, g.rows), _rows_descriptor(xs, bxk, g.rows_x),
             _weight_descriptor(descriptors, gate_up_blocks, (E * two_i, d // 8), [g.features, 8], g.words),
             _weight_descriptor(descriptors, gate_up_scales, (E * (d // 64), 2 * two_i), [1, 2 * g.features],
                                g.scales))
    if g.duo is None:
        _moe_hopper_launch[(cdiv(two_i, g.features), s.n_tiles)](
            *descs, s.order, s.order, gate_up_bias, act, s.tile_expert, s.tile_start, s.tile_end, d, two_i,
            gate_up_bias.stride(0), act.stride(0), float(limit), float(alpha),
            GATE_UP=True, TOP_K=k, BT=bt, BX=bxk, ONE_MULTIPLY=bool(one_multiply), num_warps=4, **g.kwargs)
    else:  # persistent: at most one program an SM
        g.duo.launch(descs, s.order, s.order, gate_up_bias, act, s, d, two_i, float(limit), float(alpha), True, bt,
                     bxk, bool(one_multiply), g.kwargs)
    y = torch.empty(A, d, device=x.device, dtype=slot_dtype or x.dtype)  # (moe.moe_mxfp4: why not fp32)
    route_w = weight.reshape(-1).contiguous()
    g = g_down
    descs = (_rows_descriptor(act, bt, g.rows), _rows_descriptor(act, bxk, g.rows_x),
             _weight_descriptor(descriptors, down_blocks, (E * d, I // 8), [g.features, 8], g.words),
             _weight_descriptor(descriptors, down_scales, (E * (I // 64), 2 * d), [1, 2 * g.features], g.scales))
    if g.duo is None:
        _moe_hopper_launch[(cdiv(d, g.features), s.n_tiles)](
            *descs, s.order, route_w, down_bias, y, s.tile_expert, s.tile_start, s.tile_end, I, d,
            down_bias.stride(0), y.stride(0), 0.0, 0.0,
            GATE_UP=False, TOP_K=k, BT=bt, BX=bxk, ONE_MULTIPLY=bool(one_multiply), num_warps=4, **g.kwargs)
    else:
        g.duo.launch(descs, s.order, route_w, down_bias, y, s, I, d, 0.0, 0.0, False, bt, bxk, bool(one_multiply),
                     g.kwargs)
    return sum_slots(y, N, x.dtype, residual, norm)


SELF_TEST_TOLERANCE = 2e-2  # relative (Frobenius) difference from fp32 maths; bf16 rounding gives ~4e-3


def self_test(device: torch.device) -> str | None:
    """moe_mxfp4_hopper on a small random MoE (8 experts, d = I = 512: 8 K steps, so the loop and its stages wrap;
    300 tokens routed unevenly, so that tiles with overflow rows, narrow ones and several to an expert all occur) at
    every tile hopper_tile, gate_up_cluster and duo_tile pick, and with both decodes at one, against the same MoE in
    fp32 from the dequantized weights. None if every result is finite and within SELF_TEST_TOLERANCE, else what
    went wrong. For Tritons the kernels were not verified on (trusted)."""
    from gptoss_viz.runtime.gptoss import swiglu_clamped
    from gptoss_viz.runtime.mxfp4 import mxfp4_dequant, to_hopper_order, to_hopper_scales

    E, d, I, k, N, limit, alpha = 8, 512, 512, 2, 300, 7.0, 1.702
    g = torch.Generator(device=device).manual_seed(0)
    u8 = lambda lo, hi, *s: torch.randint(lo, hi, s, generator=g, device=device, dtype=torch.uint8)  # noqa: E731
    bf = lambda scale, *s: (scale * torch.randn(*s, generator=g, device=device)).to(torch.bfloat16)  # noqa: E731
    gu_blocks, gu_scales = u8(0, 256, E, 2 * I, d // 32, 16), u8(117, 123, E, 2 * I, d // 32)
    gu_bias = bf(0.5, E, 2 * I)
    dn_blocks, dn_scales, dn_bias = u8(0, 256, E, d, I // 32, 16), u8(117, 123, E, d, I // 32), bf(0.1, E, d)
    x = bf(1.0, N, d)
    skew = torch.linspace(3.0, -3.0, E, device=device)  # expert 0 gets many rows, expert 7 few
    idx = (torch.randn(N, E, generator=g, device=device) + skew).topk(k, -1).indices
    weight = torch.randn(N, k, generator=g, device=device).softmax(-1).to(torch.bfloat16)
    w1, w2 = mxfp4_dequant(gu_blocks, gu_scales, torch.float32), mxfp4_dequant(dn_blocks, dn_scales, torch.float32)
    exact = torch.zeros(N, d, device=device)
    for e in range(E):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        h = x[tok].float() @ w1[e].reshape(2 * I, d).T + gu_bias[e].float()
        y = swiglu_clamped(h, limit, alpha) @ w2[e].reshape(d, I).T + dn_bias[e].float()
        exact.index_add_(0, tok, y * weight[tok, slot].float()[:, None])
    packed = (to_hopper_order(gu_blocks), to_hopper_scales(gu_scales), gu_bias,
              to_hopper_order(dn_blocks), to_hopper_scales(dn_scales), dn_bias)
    picked = {hopper_tile(m, e) for m in (1, 20, 80, 200, 600) for e in (32, 128)}
    # (a cluster or duo tile: both launches)
    tiles = sorted(picked | {gate_up_cluster(t, CLUSTERS) for t in picked} | {duo_tile(t, CLUSTERS) for t in picked})
    for tile in tiles:
        for one in ((True, False) if tile == hopper_tile(200, 32) else (True,)):
            got = moe_mxfp4_hopper(x, idx, weight, *packed, limit, alpha, tile=tile, one_multiply=one).float()
            err = ((got - exact).norm() / exact.norm()).item()
            if not (torch.isfinite(got).all() and err <= SELF_TEST_TOLERANCE):
                return (f"tile {tuple(tile)}{'' if one else ', two multiplies'}: relative difference {err:.3g} from "
                        f"fp32 (at most {SELF_TEST_TOLERANCE} expected)")
    return None


@functools.lru_cache(maxsize=None)
def _trusted(device: torch.device) -> bool:
    ok, why = verify.trusted(triton.__version__, lambda: self_test(device), "the Hopper MoE kernels")
    if not verify.verified(triton.__version__):
        log.warning(why)
    return ok


def trusted(device: torch.device) -> bool:
    """Whether the model may run these kernels on `device`: yes on a Triton the GPU tests ran on; on another, if
    they pass self_test there (run once per process and device, with a warning either way; verify.py)."""
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    return _trusted(device)
