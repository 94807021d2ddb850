"""GPU time of the MoE schedule kernel (kernels/fused.py, one program) at several CHUNK sizes (how many assignments
each pass of its two loops takes at once) and warp counts, against the product's 1024 and 16 warps; each result
checked against schedule.moe_schedule (same tiles, the same rows in each expert's group). Development probe
(issue 6): `python schedule_chunk_probe.py OUT.json`."""

import json
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from schedule_probe import gpu_us  # noqa: E402

from gptoss_viz.runtime.kernels.fused import _schedule_kernel  # noqa: E402
from gptoss_viz.runtime.kernels.schedule import max_tiles, moe_schedule  # noqa: E402


def schedule(idx, E, bm, chunk, warps):
    flat = idx.reshape(-1)
    A = flat.numel()
    n = max_tiles(A, E, bm)
    EP = triton.next_power_of_2(E + 1)
    buf = torch.empty(3 * n + 2 * A + EP, device=idx.device, dtype=torch.int32)
    tiles, order, token = buf[:3 * n].view(3, n), buf[3 * n:3 * n + A], buf[3 * n + A:3 * n + 2 * A]
    cursor = buf[3 * n + 2 * A:]
    _schedule_kernel[(1,)](flat, order, token, cursor, tiles[0], tiles[1], tiles[2], A, E, n, TOP_K=idx.shape[-1],
                           BLOCK_M=bm, EP=EP, CHUNK=chunk, TB=64, num_warps=warps)
    return tiles, order, token


def main() -> None:
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for E, N, bm in ((32, 128, 32), (32, 512, 64), (32, 1024, 160), (32, 2048, 160), (32, 4096, 192),
                     (128, 1024, 64), (128, 4096, 160)):
        idx = torch.randn(N, E, device="cuda", generator=g).topk(4, -1).indices
        ref = moe_schedule(idx, E, bm)
        flat = idx.reshape(-1)
        A = flat.numel()
        for chunk, warps in ((1024, 16), (2048, 16), (4096, 16), (8192, 16), (4096, 32), (8192, 32), (16384, 32)):
            if chunk > 2 * triton.next_power_of_2(A):
                continue
            tiles, order, token = schedule(idx, E, bm, chunk, warps)
            ok = all(torch.equal(tiles[i].long(), t.long()) for i, t in
                     enumerate((ref.tile_expert, ref.tile_start, ref.tile_end)))
            ok = ok and torch.equal(flat[order.long()], flat[ref.order])
            ok = ok and torch.equal(torch.sort(order.long()).values, torch.arange(A, device="cuda"))
            ok = ok and torch.equal(token.long(), order.long() // 4)
            us = gpu_us(lambda: schedule(idx, E, bm, chunk, warps))
            row = {"E": E, "tokens": N, "block_m": bm, "chunk": chunk, "warps": warps, "us": us, "correct": ok}
            print(row, flush=True)
            R["rows"].append(row)
    Path(sys.argv[1]).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
