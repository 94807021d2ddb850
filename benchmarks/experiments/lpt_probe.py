"""Does the order of the MoE tiles matter? The Hopper MoE kernels' programs run in launch order, the row tiles in
expert order; the last wave's programs, whatever their length, set when the kernel ends. Here the tiles are put
longest first (overflow tiles, full, half, quarter, then the spare ones: the grid's static upper bound) by a
stable sort on the GPU after the schedule, against expert order, in the 20b forward, alternating. Same outputs
bit for bit expected (every tile writes its own rows). Development probe (issue 6).

    python benchmarks/experiments/lpt_probe.py OUT.json [LENGTHS]
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import alternate, probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402
from gptoss_viz.runtime.kernels.schedule import MoeSchedule  # noqa: E402

_plain = moe_hopper.moe_schedule_fused
_tile = moe_hopper.hopper_tile


def lpt_schedule(idx, n_experts, block_m):
    """The same schedule with its tiles sorted by their kernel's cost class (stable)."""
    s = _plain(idx, n_experts, block_m)
    bt = _tile(idx.numel() / n_experts, n_experts).bt
    rows = s.tile_end - s.tile_start
    cls = torch.where(rows > bt, 0, torch.where(rows > bt // 2, 1, torch.where(rows > bt // 4, 2, 3)))
    cls = torch.where(rows <= 0, 4, cls)
    perm = torch.sort(cls, stable=True).indices
    return MoeSchedule(order=s.order, tile_expert=s.tile_expert[perm].contiguous(),
                       tile_start=s.tile_start[perm].contiguous(), tile_end=s.tile_end[perm].contiguous(),
                       n_tiles=s.n_tiles, token=s.token)


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([512, 1024, 2048, 4096])
    model.use_kernels = True

    def plain():
        moe_hopper.moe_schedule_fused = _plain

    def lpt():
        moe_hopper.moe_schedule_fused = lpt_schedule

    for T, ids in prompts:
        row = alternate(model, ids, {"expert order": plain, "longest first": lpt, "expert order again": plain,
                                     "longest first again": lpt}, {"T": T}, rounds=2)
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
