"""The MoE tile schedule (plain torch, CPU): every routed (token, slot) pair lands in exactly one tile row of
its own expert, tiles never cross experts, and spare tiles of the static grid are empty."""

from __future__ import annotations

import pytest
import torch

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
