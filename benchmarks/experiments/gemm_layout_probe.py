"""The 20b attention projections and LM head as cuBLAS runs them (F.linear, bf16, bias) with the weight stored
as the checkpoint has it ([out, in], row-major) against the same weight stored transposed ([in, out] row-major,
passed as its .t() view): cuBLAS picks its kernel by layout, and at 1024 tokens the output projection
(4096 -> 2880) ran at ~560 TFLOP/s against ~870 for q/k/v (profile_forward.py). GPU time of each (a CUDA graph
of 20 calls replayed, median of 3 replays / 20), and whether the two layouts give equal outputs.

    python benchmarks/experiments/gemm_layout_probe.py OUT.json [LENGTHS]
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_kernel import graph_ms  # noqa: E402

SHAPES = {"o_proj": (4096, 2880), "qkv_proj": (2880, 5120), "router": (2880, 32), "lm_head": (2880, 201088)}


def main() -> None:
    out = Path(sys.argv[1])
    lengths = [int(t) for t in sys.argv[2:]] or [512, 1024, 2048, 4096]
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        for name, (k, n) in SHAPES.items():
            w = (torch.randn(n, k, generator=g, device="cuda") * k ** -0.5).to(torch.bfloat16)
            b = None if name == "lm_head" else torch.randn(n, generator=g, device="cuda").to(torch.bfloat16)
            wt = w.t().contiguous()  # [in, out]
            for T in lengths:
                x = torch.randn(T, k, generator=g, device="cuda").to(torch.bfloat16)
                row = {"gemm": name, "T": T, "in": k, "out": n}
                for lay, weight in (("row_major", w), ("transposed", wt.t())):
                    row[f"{lay}_ms"] = graph_ms(lambda: F.linear(x, weight, b))
                    row[f"{lay}_tflops"] = 2 * T * k * n / row[f"{lay}_ms"] / 1e9
                row["equal"] = torch.equal(F.linear(x, w, b), F.linear(x, wt.t(), b))
                row["transposed_over_row_major"] = row["transposed_ms"] / row["row_major_ms"]
                print(json.dumps(row), flush=True)
                R["rows"].append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
