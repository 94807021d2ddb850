"""The launch shapes of the Hopper MoE kernels (moe_hopper.py) and the rule that picks one: plain Python, so that
the rule can be read and tested where Triton is not installed. moe_hopper.py imports both (`moe_hopper.HopperTile`,
`moe_hopper.hopper_tile`, which the probes in benchmarks/experiments replace to compare rules)."""

from __future__ import annotations

from typing import NamedTuple


class HopperTile(NamedTuple):
    """A launch shape: tiles of up to bt + bx rows of one expert (bx: the overflow rows' narrow wgmma, 0 for none),
    `stages` K steps' copies (activation rows, weight words and scales) in flight, at most `maxnreg` registers a
    thread (0: ptxas's choice); `narrow`: a tile of at most bt / 4 or bt / 2 rows runs a wgmma of that width
    instead of bt (taken only where those are >= 16 rows); `halves`: 2 for 128 output features a program
    (two m64 wgmmas on each step's activation tiles: the step's copies, barriers and waits shared by twice the
    weights), 1 for 64 (moe_hopper.BO); `cluster`: 2 for clusters of two programs on neighbouring feature tiles
    that share each activation tile by one TMA multicast (Triton 3.7 only; halves 1, no narrow tiles), 1 for none;
    `duo`: moe_hopper_duo's kernels instead (two warp groups, 128 output features, sharing each activation tile, and a
    loader warp a program, one program an SM; Triton 3.7 only; halves 1, cluster 1, no narrow tiles)."""
    bt: int
    bx: int
    stages: int
    maxnreg: int = 0
    narrow: bool = True
    halves: int = 1
    cluster: int = 1
    duo: bool = False


def hopper_tile(rows_per_expert: float, n_experts: int = 32) -> HopperTile:
    """The tile for a mean of `rows_per_expert` rows an expert: BT the largest power of two <= the mean in 16..128,
    BX 32 (BT below 32: BT; none below 16 rows; 64 from 512 rows on), 3 stages for BT 128, else 4; for BT 64 three
    stages and at most 128 registers a thread (ptxas's own choice, 140, leaves room for 3 programs of 128 threads
    an SM, 128 for 4): 23% less time at 512 tokens than 4 stages uncapped, and with the weight words coming by TMA
    into the stages, 3 stages beat 2 by 15% (gate_up 0.223 against 0.263 ms). The fastest or within ~5% of it of
    every (BT, BX, STAGES, registers) measured on one gpt-oss-20b layer on an H200 from 1 to 4096 tokens
    (benchmarks/moe_hopper.py, results/moe_hopper_h200*.json, moe_hopper_dev_wtma.json).
    With 64 or more experts (120b's 128) and a mean of 4 to 63 rows an expert (128 to 2047 tokens for 120b), 32+32
    tiles of 128 output features a program (`halves` 2): on one 120b layer, gate_up + down at 128 / 256 / 384 / 512
    / 1024 / 1536 tokens 0.842 / 0.846 / 0.846 / 0.850 / 0.962 / 1.091 ms against 0.861 / 0.866 / 0.965 / 0.960
    (16-row tiles) / 1.035 / 1.217 (32+32) with 64 features (results/moe_hopper_h200_halves*.json; Nsight Compute:
    the 64-feature 32-row kernel issued an instruction on 79% of a scheduler's cycles, and a step's copies, barriers
    and waits shared by twice the weights leave fewer to issue). On 20b's 32 experts (shorter grids) it was no
    faster with the decode of then (0.305 against 0.292 ms at 256 tokens), nor at BT 64 or 128
    (results/moe_hopper_h200_halves_sweep*.json); with the twelfth session's cheaper decode it is, for a mean of
    16-63 rows (128-511 tokens for 20b): gate_up + down at 128 / 192 / 256 / 320 / 384 / 448 tokens 0.209 / 0.215
    / 0.242 / 0.265 / 0.268 / 0.279 ms against 0.222 / 0.264 / 0.255 / 0.269 / 0.272 / 0.290 with 64 features
    (16+16 tiles up to 255 tokens; two runs each, results/moe_hopper_h200_decode_h2_sweep_20b_*.json), and slower
    at 512 (0.358 against 0.310, 64+32). Below 16 rows it was not measured on 32 experts, below 4 on 128.
    """
    m = rows_per_expert
    if (n_experts >= 64 and 4 <= m < 64) or 16 <= m < 64:
        return HopperTile(32, 32, 4, halves=2)
    bt = 16
    while bt < 128 and 2 * bt <= m:
        bt *= 2
    bx = 0 if m < 16 else (64 if m >= 512 else min(bt, 32))
    if bt == 64:
        return HopperTile(bt, bx, 3, maxnreg=128)
    return HopperTile(bt, bx, 3 if bt == 128 else 4)


def gate_up_cluster(tile: HopperTile, clusters: bool) -> HopperTile:
    """gate_up's tile where hopper_tile chose `tile` for both launches: 128+32 with 3 stages runs gate_up as clusters
    of two programs (`cluster` 2, narrow tiles off) where Triton has clusters (3.7: moe_hopper.CLUSTERS); down keeps
    `tile`. On one gpt-oss-20b layer on an H100 (twenty-fifth session,
    results/moe_multicast_sync2_scratch_h100_s25.json), gate_up took 0.273 against 0.281 ms at 1024 tokens and 0.534
    against 0.559 at 2048; down as clusters was 2-7% slower (narrow tiles help it most), so it stays. bt and bx are
    kept: both launches share one schedule."""
    if clusters and tile == HopperTile(128, 32, 3):
        return tile._replace(narrow=False, cluster=2)
    return tile


def duo_tile(tile: HopperTile, available: bool) -> HopperTile:
    """Both launches' tile where hopper_tile chose `tile`: its 128+64 tiles (a mean of 512 or more rows an expert:
    20b from 4096 tokens) run as moe_hopper_duo's kernels with 5 stages where those are available (Triton 3.7:
    moe_hopper.CLUSTERS). On one gpt-oss-20b layer on an H100 (twenty-ninth session,
    results/moe_duo_h100_s29*.json), gate_up / down took 0.940 / 0.455 ms against 1.040 / 0.504 at 4096 tokens and
    1.78 / 0.88 against 2.05 / 1.00 at 8192. Where hopper_tile takes 128+32 (1024-4095 tokens) it was slower, with
    either tile (at 1024: 0.271-0.275 / 0.142 with 128+32 and 0.29 / 0.146 with 128+64 against 0.273 / 0.134; at
    3072: 0.82 / 0.42 against 0.80 / 0.41), so those stay moe_hopper's. bt and bx are kept: one schedule."""
    if available and tile == HopperTile(128, 64, 3):
        return HopperTile(128, 64, 5, narrow=False, duo=True)
    return tile
