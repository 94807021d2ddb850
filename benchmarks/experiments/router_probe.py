"""The router's linear and route at 20b's shapes (d 2880, 32 experts, top 4): cuBLAS's F.linear then
route_fused (the fast path before the seventeenth session: three kernels) against router_route_fused (one), and
router_route_fused's tile (BT rows, BD-wide chunks, stages, warps) swept. Each call timed as a CUDA graph of 20
calls (GPU time only), medians. Development probe (issue 6): `python router_probe.py OUT.json [LENGTHS]`."""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from probe_setup import capture, replay_ms

from gptoss_viz.runtime.kernels import fused
from gptoss_viz.runtime.kernels.launch import cdiv, pow2


def graph_us(fn, calls: int = 20, reps: int = 7) -> float:
    """GPU us a call of fn: a CUDA graph of `calls` calls, the median of `reps` replays."""
    graph, _ = capture(lambda: [fn() for _ in range(calls)])
    return replay_ms(graph, reps) * 1e3 / calls


def tile(h, w, b, k, BT, BD, stages, warps):
    T, D = h.shape
    E = w.shape[0]
    logits = torch.empty(T, E, device=h.device, dtype=h.dtype)
    idx = torch.empty(T, k, device=h.device, dtype=torch.int64)
    wt = torch.empty(T, k, device=h.device, dtype=h.dtype)
    return lambda: fused._router_route_kernel[(cdiv(T, BT),)](
        h, w, b, logits, idx, wt, T, D, E, h.stride(0), K=k, BT=BT, BD=BD, EP=max(16, pow2(E)), KP=pow2(k),
        EXPF=True, num_warps=warps, num_stages=stages)


def main() -> None:
    out = Path(sys.argv[1])
    lengths = [int(t) for t in sys.argv[2:]] or [128, 1024, 4096]
    D, E, k = 2880, 32, 4
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(E, D, device="cuda", generator=g) / D ** 0.5).bfloat16()
    b = (0.1 * torch.randn(E, device="cuda", generator=g)).bfloat16()
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    for T in lengths:
        h = torch.randn(T, D, device="cuda", generator=g).bfloat16()
        row = {"T": T, "linear_then_route_us": graph_us(lambda: fused.route_fused(F.linear(h, w, b), k)),
               "linear_us": graph_us(lambda: F.linear(h, w, b)),
               "router_route_fused_us": graph_us(lambda: fused.router_route_fused(h, w, b, k))}
        logits, idx, wt = fused.router_route_fused(h, w, b, k)
        ref = F.linear(h, w, b)
        row["logits_equal_to_linear"] = (logits == ref).float().mean().item()
        row["experts_equal_to_linear_route"] = (idx == fused.route_fused(ref, k)[0]).all(-1).float().mean().item()
        sweep = {}
        for BT in (16, 32):
            for BD in (64, 128, 256):
                for stages in (2, 3, 4):
                    for warps in (4, 8):
                        try:
                            sweep[f"BT{BT} BD{BD} s{stages} w{warps}"] = graph_us(
                                tile(h, w, b, k, BT, BD, stages, warps))
                        except Exception as e:  # (a tile that does not compile: recorded, not fatal)
                            sweep[f"BT{BT} BD{BD} s{stages} w{warps}"] = f"{type(e).__name__}"
        best = min((v, n) for n, v in sweep.items() if isinstance(v, float))
        row["sweep_us"] = sweep
        row["best"] = {"tile": best[1], "us": best[0]}
        R["rows"].append(row)
        print(json.dumps({kk: v for kk, v in row.items() if kk != "sweep_us"}), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
