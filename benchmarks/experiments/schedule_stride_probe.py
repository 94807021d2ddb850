"""GPU time of the MoE schedule kernel (kernels/fused.py: one program, a counting sort whose rows come from atomic
adds on per-expert cursors) with the cursors 1, 8, ... 512 ints apart: 32 cursors in one 128-byte line put every
atomic on one L2 slice, which serves them one after another. Each result checked against schedule.moe_schedule
(same tiles; the same rows in each expert's group). Development probe (issue 6), with schedule_cursor_stride.patch
(onto 9ad5197: moe_schedule_fused's `cursor_stride`) applied: `python schedule_stride_probe.py OUT.json`."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from schedule_probe import gpu_us  # noqa: E402

from gptoss_viz.runtime.kernels.fused import moe_schedule_fused  # noqa: E402
from gptoss_viz.runtime.kernels.schedule import moe_schedule  # noqa: E402


def main() -> None:
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for E, N, bm in ((32, 128, 32), (32, 1024, 160), (32, 4096, 192), (128, 1024, 64), (128, 4096, 160)):
        idx = torch.randn(N, E, device="cuda", generator=g).topk(4, -1).indices
        ref = moe_schedule(idx, E, bm)
        flat = idx.reshape(-1)
        for stride in (1, 8, 32, 64, 128, 512):
            s = moe_schedule_fused(idx, E, bm, cursor_stride=stride)
            ok = all(torch.equal(getattr(s, n).long(), getattr(ref, n).long())
                     for n in ("tile_expert", "tile_start", "tile_end"))
            ok = ok and torch.equal(flat[s.order.long()], flat[ref.order])  # each row in its expert's group
            ok = ok and torch.equal(torch.sort(s.order.long()).values, torch.arange(flat.numel(), device="cuda"))
            ok = ok and torch.equal(s.token.long(), s.order.long() // 4)
            us = gpu_us(lambda: moe_schedule_fused(idx, E, bm, cursor_stride=stride))
            row = {"E": E, "tokens": N, "block_m": bm, "cursor_stride": stride, "us": us, "correct": ok}
            print(row, flush=True)
            R["rows"].append(row)
    Path(sys.argv[1]).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
