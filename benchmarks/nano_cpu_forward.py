"""512-token forward of each bundled nano model on the CPU, against transformers on the same weights.

Target (issue 3): at most 150 ms per model on the 2-core CI machine, fp32 (bf16 matmuls are emulated on CPUs
without AVX512-BF16 and run several times slower). Also times the full instrumented run (every hook cached) and
transformers' GptOssForCausalLM / GPT2LMHeadModel on the same weights and tokens, in the same run.

    python benchmarks/nano_cpu_forward.py [--repeat 10] [--out benchmarks/results/nano_cpu_forward.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptoss_viz import load_model  # noqa: E402
from gptoss_viz.runtime.checkpoints import BUNDLED, REPO_ROOT  # noqa: E402

TARGET_MS = 150.0


def timed(fn, repeat: int) -> float:
    """Median wall time of fn() in ms after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "nano_cpu_forward.json")
    args = ap.parse_args()
    from transformers import GPT2LMHeadModel, GptOssForCausalLM, Mxfp4Config

    text = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")
    rows = {}
    for name in ("gpt-oss-nano", "gpt2-nano"):
        ours = load_model(name, dtype=torch.float32)
        ids = torch.tensor(ours.tokenizer.encode(text)[: args.tokens])
        assert len(ids) == args.tokens
        if name == "gpt-oss-nano":
            peer = GptOssForCausalLM.from_pretrained(str(BUNDLED[name]), dtype=torch.float32,
                                                     quantization_config=Mxfp4Config(dequantize=True))
        else:
            peer = GPT2LMHeadModel.from_pretrained(str(BUNDLED[name]), dtype=torch.float32)
        peer.eval()
        with torch.inference_mode():
            fwd = timed(lambda: ours(ids), args.repeat)
            cached = timed(lambda: ours.run_with_cache(ids), args.repeat)
            hf = timed(lambda: peer(ids[None]), args.repeat)
        rows[name] = {"forward_ms": round(fwd, 1), "full_cache_ms": round(cached, 1), "transformers_ms": round(hf, 1),
                      "forward_vs_target": round(fwd / TARGET_MS, 3), "forward_vs_transformers": round(fwd / hf, 3)}
        print(f"{name}: forward {fwd:.1f} ms ({fwd / TARGET_MS:.2f} x the {TARGET_MS:.0f} ms target), "
              f"all hooks cached {cached:.1f} ms, transformers {hf:.1f} ms (ours / theirs = {fwd / hf:.2f})")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "tokens": args.tokens, "dtype": "float32", "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
