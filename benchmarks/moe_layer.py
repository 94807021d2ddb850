"""One gpt-oss-20b MoE layer on the Triton fast path, for profilers (issue 6).

    ncu --kernel-name regex:_gate_up --launch-skip 3 --launch-count 1 --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section SourceCounters --print-details all \
        python benchmarks/moe_layer.py 1024

Builds the layer with random packed weights in GPU memory, routes T random tokens with its router, runs
moe_mxfp4 a few times (the tables' tiles, or --decode), checks the output against the fp16/fp32 decode (the
relative difference is printed: 0 means the same bits) and prints the median time. results/ncu_*.txt hold the
profiles RESULTS.md cites.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms  # noqa: E402
from moe_variants import one_20b_layer, routed, run_moe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=int)
    ap.add_argument("--decode", type=int, default=None,
                    help="MXFP4 decode variant (kernels/moe.py); default: the table's")
    args = ap.parse_args()
    cfg, mlp = one_20b_layer()
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(args.tokens, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
    w, idx = routed(mlp, x)
    with torch.inference_mode():
        for _ in range(3):
            y = run_moe(mlp, x, idx, w, decode=args.decode)
        ref = run_moe(mlp, x, idx, w, decode=0)
        print("relative difference to decode 0:", ((y.float() - ref.float()).norm() / ref.float().norm()).item())
        print(f"median {gpu_ms(lambda: run_moe(mlp, x, idx, w, decode=args.decode), 3, 10):.3f} ms")


if __name__ == "__main__":
    main()
