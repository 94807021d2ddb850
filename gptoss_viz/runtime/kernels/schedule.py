"""Tile schedule for the grouped MoE matmuls: which expert and which rows each Triton program handles.

Plain torch, no host synchronisation (the grid size is a static upper bound, so the forward pass never waits on
the GPU to learn how many tokens each expert got), and no Triton import, so it is tested on the CPU too.

Letters: N tokens, k experts per token, A = N * k assignments (token, slot), E experts, BM rows per tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoeSchedule:
    order: torch.Tensor  # [A] assignment ids (t * k + j) sorted by expert, stable: row m of the grouped matmul
    tile_expert: torch.Tensor  # [n_tiles] int32 expert of each tile
    tile_start: torch.Tensor  # [n_tiles] int32 first grouped row of each tile (0 for unused tiles)
    tile_end: torch.Tensor  # [n_tiles] int32 end of that expert's rows (0 for unused tiles: start == end)
    n_tiles: int  # static upper bound on the number of tiles: the grid size
    token: torch.Tensor  # [A] the token of each grouped row (order // k): the rows to gather, in order


def max_tiles(n_assignments: int, n_experts: int, block_m: int) -> int:
    """sum_e ceil(c_e / BM) <= sum_e (c_e / BM + 1) = A / BM + E, whatever the routing."""
    return -(-n_assignments // block_m) + min(n_experts, n_assignments)


def moe_schedule(idx: torch.Tensor, n_experts: int, block_m: int) -> MoeSchedule:
    """Group the (token, slot) assignments of idx [N, k] by expert and cut each expert's rows into tiles of BM.

    Tile order (the order the kernels' grids run them in): first every tile of BM rows, by expert, then each
    expert's last tile where it holds fewer, the fullest first (equal ones by expert). Programs of unequal length
    then leave the short ones for the end of the grid instead of a few long ones on an otherwise idle GPU: in the
    20b forward on an H100 the Hopper MoE kernels took 1.4-1.8% less time than in expert order at 512-2048 tokens
    (0.2 ms at 1024), the same at 128 (benchmarks/experiments/tile_order_probe.py, RESULTS.md, twenty-second
    session)."""
    flat = idx.reshape(-1)  # [A]
    A = flat.numel()
    k = idx.shape[-1] if idx.dim() > 1 else 1
    order = torch.argsort(flat, stable=True)  # [A]
    # rows per expert [E]; scatter_add, not bincount, which on CUDA reads the largest index back to the host
    counts = torch.zeros(n_experts, dtype=torch.int64, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))
    ends = counts.cumsum(0)  # [E] end row of each expert's group
    starts = ends - counts
    tiles = (counts + block_m - 1) // block_m  # [E] tiles per expert
    last = counts - (tiles - 1) * block_m  # rows of its last tile (block_m for an expert with none)
    partial = (counts > 0) & (last < block_m)  # its last tile holds fewer than block_m rows
    full = tiles - partial.long()  # [E] tiles of block_m rows
    full_ends = full.cumsum(0)
    full_begins = full_ends - full
    n_full = full_ends[-1]
    experts = torch.arange(n_experts, device=idx.device)
    key = torch.where(partial, block_m - last, block_m + 1) * n_experts + experts  # fullest first, then by expert
    by_rows = key.argsort()  # the experts with a partial tile first, in that order
    n = max_tiles(A, n_experts, block_m)
    t = torch.arange(n, device=idx.device)
    in_full = t < n_full
    e_full = torch.searchsorted(full_ends, t, right=True)  # tile t's expert, if t < n_full
    e_last = by_rows[(t - n_full).clamp(0, n_experts - 1)]  # the (t - n_full)-th partial tile's expert
    valid = t < n_full + partial.sum()
    e = torch.where(valid, torch.where(in_full, e_full, e_last), n_experts - 1)
    start = torch.where(in_full, starts[e] + (t - full_begins[e]) * block_m, starts[e] + (tiles[e] - 1) * block_m)
    zero = torch.zeros_like(start)
    return MoeSchedule(order=order,
                       tile_expert=e.to(torch.int32),
                       tile_start=torch.where(valid, start, zero).to(torch.int32),
                       tile_end=torch.where(valid, ends[e], zero).to(torch.int32),
                       n_tiles=n,
                       token=torch.div(order, k, rounding_mode="floor"))
