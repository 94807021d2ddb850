"""The MoE tile schedule (plain torch, CPU): every routed (token, slot) pair lands in exactly one tile row of
its own expert, tiles never cross experts, and spare tiles of the static grid are empty; and the Hopper kernels'
tile rule (pure Python)."""

from __future__ import annotations

import pytest
import torch

from gptoss_viz.runtime.kernels.hopper_tiles import HopperTile, duo_tile, gate_up_cluster, hopper_tile
from gptoss_viz.runtime.kernels.schedule import max_tiles, moe_schedule


@pytest.mark.parametrize("N,E,k,BM", [(1, 8, 2, 16), (37, 8, 2, 16), (300, 32, 4, 64), (1024, 32, 4, 128),
                                      (129, 128, 4, 16), (50, 4, 1, 16)])
def test_schedule_covers_every_assignment_once(N, E, k, BM):
    g = torch.Generator().manual_seed(N)
    idx = torch.randn(N, E, generator=g).topk(k, -1).indices
    idx[: N // 3] = torch.arange(k)  # skew: a third of the tokens on the same k experts
    s = moe_schedule(idx, E, BM)
    flat = idx.reshape(-1)
    assert s.n_tiles == max_tiles(N * k, E, BM) == len(s.tile_start)
    grouped = flat[s.order]
    assert (grouped[1:] >= grouped[:-1]).all(), "assignments are not grouped by expert"
    assert torch.equal(s.token, s.order // k), "token is not each grouped row's token"
    seen = torch.zeros(N * k, dtype=torch.int64)
    for t in range(s.n_tiles):
        start, end, e = int(s.tile_start[t]), int(s.tile_end[t]), int(s.tile_expert[t])
        if start == end:
            continue
        rows = torch.arange(start, min(start + BM, end))
        assert (grouped[rows] == e).all(), f"tile {t} of expert {e} holds rows of other experts"
        seen[rows] += 1
    assert (seen == 1).all(), f"rows covered {seen.min().item()}..{seen.max().item()} times, expected once"


@pytest.mark.parametrize("N,E,k,BM", [(37, 8, 2, 16), (300, 32, 4, 64), (1024, 32, 4, 160), (129, 128, 4, 16),
                                      (64, 4, 1, 16)])
def test_schedule_runs_full_tiles_first_then_last_tiles_fullest_first(N, E, k, BM):
    """Tile order: every tile of BM rows first (by expert, then by row), then each expert's shorter last tile, the
    fullest first (equal ones by expert), then the spare tiles (empty, expert E - 1)."""
    g = torch.Generator().manual_seed(N + E)
    idx = torch.randn(N, E, generator=g).topk(k, -1).indices
    idx[: N // 4] = torch.arange(k)  # skew: some experts with several tiles
    s = moe_schedule(idx, E, BM)
    rows = [min(int(e) - int(b), BM) for b, e in zip(s.tile_start, s.tile_end)]
    real = [r for r in rows if r > 0]
    assert rows == real + [0] * (len(rows) - len(real)), "a spare tile among the real ones"
    assert all(int(e) == E - 1 for e, r in zip(s.tile_expert, rows) if r == 0)
    assert real == sorted(real, reverse=True), "tiles not in decreasing row counts"
    full = [(int(e), int(b)) for e, b, r in zip(s.tile_expert, s.tile_start, rows) if r == BM]
    assert full == sorted(full), "the full tiles are not in expert and row order"
    short = [int(e) for e, r in zip(s.tile_expert, rows) if 0 < r < BM]
    assert len(short) == len(set(short)), "an expert with two short tiles"
    assert all(short[i] < short[i + 1] for i in range(len(short) - 1) if real[len(full) + i] == real[len(full) + i + 1])
    counts = torch.bincount(idx.reshape(-1), minlength=E)
    assert sorted(short) == [e for e in range(E) if counts[e] % BM], "short tiles are not the experts' last ones"


def test_hopper_tile_rule_takes_two_halves_for_few_rows_an_expert():
    """hopper_tile: 32+32 tiles of 128 output features a program (halves 2) for a mean of 4-63 rows an expert with
    64 or more experts (120b), and of 16-63 with fewer (20b's 32); the rest of the rule unchanged."""
    assert hopper_tile(1100 * 4 / 128, 128) == HopperTile(32, 32, 4, halves=2)
    assert hopper_tile(1100 * 4 / 32, 32) == HopperTile(128, 32, 3)
    assert hopper_tile(40, 32) == hopper_tile(40, 128) == hopper_tile(40) == HopperTile(32, 32, 4, halves=2)
    assert hopper_tile(4, 128) == hopper_tile(16, 128) == hopper_tile(63.9, 128) == HopperTile(32, 32, 4, halves=2)
    assert hopper_tile(16, 32) == hopper_tile(20, 32) == hopper_tile(63.9, 32) == HopperTile(32, 32, 4, halves=2)
    assert hopper_tile(15.9, 32) == HopperTile(16, 0, 4) and hopper_tile(4, 32) == HopperTile(16, 0, 4)
    assert hopper_tile(64, 32) == HopperTile(64, 32, 3, maxnreg=128)
    assert all(hopper_tile(m, 128).halves == 1 for m in (0.03, 1, 3.9, 64, 100, 200, 600))
    assert hopper_tile(80, 128) == hopper_tile(80, 32) == HopperTile(64, 32, 3, maxnreg=128)


def test_gate_up_runs_128_row_tiles_as_clusters_where_triton_has_them():
    """gate_up_cluster: hopper_tile's 128+32 tile (20b at 1024-4095 tokens) runs gate_up as clusters of two programs
    with narrow tiles off, only where Triton has clusters; every other tile, and down's, stay as chosen."""
    t = hopper_tile(1024 * 4 / 32, 32)
    assert gate_up_cluster(t, True) == HopperTile(128, 32, 3, narrow=False, cluster=2)
    assert gate_up_cluster(t, False) == t
    others = {hopper_tile(m, e) for m in (0.5, 5, 20, 40, 80, 600) for e in (32, 128)}
    assert t not in others and all(gate_up_cluster(o, True) == o for o in others)


def test_long_prompts_run_the_duo_kernels_where_triton_has_them():
    """duo_tile: hopper_tile's 128+64 tile (a mean of 512 or more rows an expert: 20b from 4096 tokens, 120b from
    16384) runs both launches as moe_hopper_duo's kernels, 5 stages, narrow tiles off, only where Triton has them;
    every other tile stays as chosen, and the schedule's rows (bt + bx) do not change."""
    for m, e in ((4096 * 4 / 32, 32), (512, 32), (16384 * 4 / 128, 128)):
        t = hopper_tile(m, e)
        assert t == HopperTile(128, 64, 3)
        assert duo_tile(t, True) == HopperTile(128, 64, 5, narrow=False, duo=True)
        assert duo_tile(t, False) == t
    others = {hopper_tile(m, e) for m in (0.5, 5, 20, 40, 80, 200, 511.9) for e in (32, 128)}
    assert all(duo_tile(o, True) == o for o in others)
    assert gate_up_cluster(duo_tile(hopper_tile(600, 32), True), True).duo  # (clusters leave it alone)
