"""The Trace's pattern statistics kernel against an older copy of kernels/attention.py (a file path), same
process, same q/k at gpt-oss-20b's attention shapes (64 query heads, 8 KV heads, head dim 64), full causal and
the 128-token window: each one's GPU time (a CUDA graph of 20 calls replayed, alternating old and new three
times) and the largest difference of each from the reference path (trace.pattern_reductions without the
kernel). With --sweep, instead: the current kernel at other block sizes, warps and stages (same checks).

    python benchmarks/experiments/stats_probe.py OUT.json OLD_ATTENTION_PY [LENGTHS]
    python benchmarks/experiments/stats_probe.py OUT.json --sweep [LENGTHS]
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_kernel import graph_ms  # noqa: E402
from gptoss_viz.runtime.kernels.attention import pattern_stats_fused  # noqa: E402
from gptoss_viz.trace import distance_edges, pattern_reductions  # noqa: E402


SWEEP = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 4, 3), (32, 32, 4, 2), (32, 16, 4, 2),
         (16, 16, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2)]


def main() -> None:
    out, old_path = Path(sys.argv[1]), sys.argv[2]
    lengths = [int(t) for t in sys.argv[3:]] or [1024, 2048, 4096]
    sweep = old_path == "--sweep"
    if not sweep:
        spec = importlib.util.spec_from_file_location("old_attention", old_path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    H, K, D = 64, 8, 64
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in lengths:
        q, k = (torch.randn(T, n, D, generator=g, device="cuda").to(torch.bfloat16) for n in (H, K))
        sinks = torch.randn(H, generator=g, device="cuda").to(torch.bfloat16)
        edges = torch.as_tensor(distance_edges(T, 128), device="cuda")
        with torch.inference_mode():
            for window in (None, 128):
                ref = pattern_reductions(q, k, sinks, window, edges, use_kernel=False)
                if sweep:
                    for bm, bn, warps, stages in SWEEP:
                        kw = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
                        got = pattern_stats_fused(q, k, sinks, window, edges, **kw)
                        row = {"T": T, "window": window, "launch": kw,
                               "max_abs_diff": max((a - b).abs().max().item() for a, b in zip(got, ref)),
                               "ms": graph_ms(lambda: pattern_stats_fused(q, k, sinks, window, edges, **kw))}
                        print(json.dumps(row), flush=True)
                        R["rows"].append(row)
                    continue
                row = {"T": T, "window": window}
                for name, fn in (("old", old.pattern_stats_fused), ("new", pattern_stats_fused)):
                    got = fn(q, k, sinks, window, edges)
                    row[f"{name}_max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(got, ref))
                times = {"old": [], "new": []}
                for _ in range(3):
                    for name, fn in (("old", old.pattern_stats_fused), ("new", pattern_stats_fused)):
                        times[name].append(graph_ms(lambda: fn(q, k, sinks, window, edges)))
                for name, ts in times.items():
                    row[f"{name}_ms"] = sorted(ts)[1]
                    row[f"{name}_runs"] = ts
                row["new_over_old"] = row["new_ms"] / row["old_ms"]
                print(json.dumps(row), flush=True)
                R["rows"].append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
