"""Host (CPU) time per call of the MoE fast paths on one gpt-oss-20b layer, by part (issue 6): when a forward is
bound by the host launching kernels, these microseconds, not the kernels', set its time.

    python benchmarks/moe_host_overhead.py --out benchmarks/results/moe_host_overhead_h200.json

Each part is called N times back to back without synchronising (the GPU runs behind), and its host time is the
wall time of those calls / N; the GPU queue is drained before each part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from moe_hopper import header, hopper_layer  # noqa: E402
from moe_variants import routed, run_moe  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402
from gptoss_viz.runtime.kernels.fused import moe_schedule_fused  # noqa: E402


def host_us(fn, n: int = 300) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return round(dt / n * 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, nargs="*", default=[1, 1024])
    args = ap.parse_args()
    R = {**header(), "rows": []}
    cfg, mlp, gu, dn, gus, dns = hopper_layer()
    ex = mlp.experts
    E, k = cfg.num_local_experts, cfg.num_experts_per_tok
    for T in args.tokens:
        x = torch.randn(T, cfg.hidden_size, device="cuda").to(torch.bfloat16)
        w, idx = routed(mlp, x)
        tile = moe_hopper.hopper_tile(T * k / E, E)
        s = moe_schedule_fused(idx, E, tile.bt + tile.bx)
        with torch.inference_mode():
            row = {"tokens": T, "tile": list(tile),
                   "table_call": host_us(lambda: run_moe(mlp, x, idx, w)),
                   "hopper_call": host_us(lambda: moe_hopper.moe_mxfp4_hopper(
                       x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns, ex.down_proj_bias, ex.limit,
                       ex.alpha)),
                   "schedule": host_us(lambda: moe_schedule_fused(idx, E, tile.bt + tile.bx)),
                   "gather_rows": host_us(lambda: x.index_select(0, s.token)),
                   "empty_x3": host_us(lambda: [torch.empty(T * k, cfg.hidden_size, device="cuda") for _ in range(3)])}
            from triton.experimental.gluon import language as gl
            from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

            xs = x.index_select(0, s.token)
            row["layouts_x2"] = host_us(lambda: [gl.NVMMASharedLayout.get_default_for([r, 64], gl.bfloat16)
                                                 for r in (tile.bt, max(tile.bx, 16))])
            lay = gl.NVMMASharedLayout.get_default_for([tile.bt, 64], gl.bfloat16)
            lay2 = gl.NVMMASharedLayout.get_default_for([max(tile.bx, 16), 64], gl.bfloat16)
            row["descriptors_x4"] = host_us(lambda: [TensorDescriptor.from_tensor(xs, [tile.bt, 64], lay)
                                                     for _ in range(4)])
            d1, d2 = TensorDescriptor.from_tensor(xs, [tile.bt, 64], lay), TensorDescriptor.from_tensor(
                xs, [max(tile.bx, 16), 64], lay2)
            act = torch.empty(T * k, cfg.intermediate_size, device="cuda", dtype=torch.bfloat16)

            d3 = TensorDescriptor.from_tensor(gu.view(torch.int32).view(E * 5760, 360), [64, 8], moe_hopper._WORDS)
            d4 = TensorDescriptor.from_tensor(gus.view(E * 45, 11520), [1, 128], moe_hopper._SCALES)

            def gate_up_launch():
                moe_hopper._moe_hopper_kernel[(90, s.n_tiles)](
                    d1, d2, d3, d4, s.order, s.order, ex.gate_up_proj_bias, act, s.tile_expert, s.tile_start,
                    s.tile_end, 2880, 5760, ex.gate_up_proj_bias.stride(0), act.stride(0), float(ex.limit),
                    float(ex.alpha), GATE_UP=True, TOP_K=k, BT=tile.bt, BX=max(tile.bx, 16), BO=64,
                    STAGES=tile.stages, num_warps=4, **({"maxnreg": tile.maxnreg} if tile.maxnreg else {}))
            row["gate_up_launch"] = host_us(gate_up_launch)
            from gptoss_viz.runtime.kernels import moe as kmoe

            y = torch.empty(T * k, cfg.hidden_size, device="cuda")
            out = torch.empty_like(x)
            row["sum_slots_launch"] = host_us(lambda: kmoe._sum_slots_kernel[(T, 3)](
                y, out, out, out, cfg.hidden_size, TOP_K=k, BD=1024, HAS_RES=False, num_warps=4))
        print(row, flush=True)
        R["rows"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
