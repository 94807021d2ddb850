"""Does the order of the MoE schedule's tiles change the Hopper MoE kernels' time in the 20b forward? (issue 6)

The schedule lists each expert's tiles in expert order, and the kernels' grid runs them in that order (feature
tiles first). Tiles differ in length: an expert's last tile may hold a few rows (a narrow wgmma) or up to BT + BX.
Programs of unequal length in expert order can leave the last wave with a few long programs running on an
otherwise idle GPU. Variants, put in place by wrapping the group_rows_fused that moe_hopper calls (it returns the
schedule) so that its tile arrays come out permuted; the outputs cannot change (each row is still computed by
one program, over the same K steps), and the probe checks the logits bit for bit:

- `expert`: the schedule's order as it comes (the product's: expert order before the twenty-second session,
  since then the full tiles first and the short last tiles fullest first, schedule.moe_schedule);
- `by_expert`: each expert's tiles together, experts in order (the order before the twenty-second session);
- `rows_desc`: tiles by their row count, most first (equal counts keep the order they came in): the
  longest-first rule that leaves the short programs for the end (the product's since the twenty-second session);
- `rows_asc`: the reverse (a control).

`alternate` (probe_setup) times each in turn: the MoE kernels' GPU ms a forward (torch.profiler) and the forward
(CUDA events; the permutation's own few torch kernels are in it, so read the MoE column). Development probe.

    python benchmarks/experiments/tile_order_probe.py OUT.json [LENGTHS]
"""

import json

import torch

from probe_setup import alternate, probe_setup

from gptoss_viz.runtime.kernels import moe_hopper

REAL = moe_hopper.group_rows_fused


def ordered(how: str):
    def group_rows(x, idx, grouping):
        xs, s = REAL(x, idx, grouping)
        if how == "expert":
            return xs, s
        rows = (s.tile_end - s.tile_start).clamp(max=grouping.block_m)  # 0 for the grid's spare tiles
        if how == "by_expert":  # each expert's tiles together, experts in order, spare tiles last
            key = torch.where(rows > 0, s.tile_expert.long() * (1 << 32) + s.tile_start, 1 << 62)
        elif how == "rows_desc":
            key = -rows
        else:
            key = torch.where(rows > 0, rows, grouping.block_m + 1)
        perm = torch.sort(key, stable=True).indices
        return xs, s.__class__(order=s.order, tile_expert=s.tile_expert[perm], tile_start=s.tile_start[perm],
                               tile_end=s.tile_end[perm], n_tiles=s.n_tiles, token=s.token)
    return group_rows


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024, 2048, 512])
    variants = {how: (lambda how=how: setattr(moe_hopper, "group_rows_fused", ordered(how)))
                for how in ("expert", "by_expert", "rows_desc", "rows_asc")}
    for T, ids in prompts:
        row = alternate(model, ids, variants, {"T": T}, rounds=3)
        moe_hopper.group_rows_fused = REAL
        print(T, row["logits_equal"], {k: v["moe_ms"] for k, v in row.items() if isinstance(v, dict)}, flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
