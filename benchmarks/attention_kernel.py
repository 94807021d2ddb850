"""The attention-with-sinks kernel (kernels/attention.py) at gpt-oss-20b's shapes (64 query heads, 8 key/value
heads, head dim 64) against PyTorch's fused causal attention (scaled_dot_product_attention, flash backend where it
runs; no sinks, no window) on the same q/k/v, same GPU, same run (issue 6).

    python benchmarks/attention_kernel.py --out benchmarks/results/attention_kernel_h200.json

Per length and window (full causal, and gpt-oss's 128-token window): our kernel at its default launch and at the
variants given, each against the reference path's output (relative Frobenius difference), its GPU time (a CUDA
graph of 20 calls replayed, CUDA events, median over replays, divided by 20: a call of a few tens of microseconds
launched alone would time the host) and its useful TFLOP/s (4 H D flops per allowed (query, key) pair: q.k and
p.v); the peer's time on full causal attention (the same allowed pairs) and ours / peer. With --stats, also the
Trace's pattern statistics kernel (pattern_stats_fused: first-token and distance-bucket masses of gpt-oss's
buckets) on the same q/k, its largest difference from the reference path (trace.pattern_reductions without the
kernel) and its time over the attention kernel's default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms  # noqa: E402


def graph_ms(fn, calls: int = 20) -> float:
    """GPU ms of one fn() call: `calls` calls captured in one CUDA graph, replayed (median), divided by calls."""
    fn()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return gpu_ms(graph.replay, warmup=2, reps=9) / calls

from gptoss_viz.runtime.gptoss import attend, attention_with_sinks  # noqa: E402
from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused, pattern_stats_fused  # noqa: E402
from gptoss_viz.trace import distance_edges, pattern_reductions  # noqa: E402

H, K, D = 64, 8, 64
VARIANTS = {"default": {}, "bm64 s2": dict(num_stages=2), "bm64 s3": dict(num_stages=3),
            "bm64 s4": dict(num_stages=4), "bm128 w8 s3": dict(block_m=128, block_n=64, num_warps=8, num_stages=3),
            "bm64 bn32 s3": dict(block_n=32, num_stages=3), "bm128 bn32 w4 s3": dict(block_m=128, block_n=32,
                                                                                      num_stages=3)}


def allowed_pairs(T: int, window: int | None) -> int:
    """(query, key) pairs attention reads: key <= query, query - key < window."""
    w = T if window is None else min(window, T)
    return w * (w + 1) // 2 + (T - w) * w


def stats_row(q, k, v, sinks, T: int, window: int | None) -> dict:
    """The pattern statistics kernel on these q/k: its GPU time, over the attention kernel's, and its largest
    difference from the reference path."""
    edges = torch.as_tensor(distance_edges(T, 128), device="cuda")
    first, dist = pattern_stats_fused(q, k, sinks, window, edges)
    first_ref, dist_ref = pattern_reductions(q, k, sinks, window, edges, use_kernel=False)
    ms = graph_ms(lambda: pattern_stats_fused(q, k, sinks, window, edges))
    attn = graph_ms(lambda: attention_with_sinks_fused(q, k, v, sinks, window))
    return {"T": T, "window": window, "kernel": "pattern_stats", "ms": ms, "attention_ms": attn,
            "over_attention": ms / attn, "max_abs_diff": max((first - first_ref).abs().max().item(),
                                                             (dist - dist_ref).abs().max().item())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--stats", action="store_true", help="also time the pattern statistics kernel")
    args = ap.parse_args()
    R = {"date": datetime.date.today().isoformat(), "env": {"gpu": torch.cuda.get_device_name(),
         "torch": torch.__version__, "triton": __import__("triton").__version__}, "rows": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in args.lengths:
        q, k, v = (torch.randn(T, n, D, generator=g, device="cuda").to(torch.bfloat16) for n in (H, K, K))
        sinks = torch.randn(H, generator=g, device="cuda").to(torch.bfloat16)
        qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, T, D]
        with torch.inference_mode():
            peer = graph_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True))
            for window in (None, 128):
                pattern, _ = attention_with_sinks(q, k, sinks, window)
                ref = attend(pattern, v).float()
                del pattern
                flops = 4 * allowed_pairs(T, window) * H * D
                for name in args.variants:
                    kw = VARIANTS[name]
                    try:
                        out, _ = attention_with_sinks_fused(q, k, v, sinks, window, **kw)
                        ms = graph_ms(lambda: attention_with_sinks_fused(q, k, v, sinks, window, **kw))
                        row = {"T": T, "window": window, "variant": name, "launch": kw, "ms": ms,
                               "tflops": flops / ms / 1e9,
                               "rel_diff": ((out.float() - ref).norm() / ref.norm()).item()}
                        if window is None:
                            row.update(peer_sdpa_ms=peer, ours_over_peer=ms / peer)
                    except Exception as e:  # e.g. out of shared memory at a large block: record, go on
                        row = {"T": T, "window": window, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]}
                    print(json.dumps(row), flush=True)
                    R["rows"].append(row)
                if args.stats:
                    R["rows"].append(stats_row(q, k, v, sinks, T, window))
                    print(json.dumps(R["rows"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
