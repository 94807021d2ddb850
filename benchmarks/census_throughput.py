"""Census throughput: prompts per second with the nano models on the CPU, batched (as the census runs) against
one forward pass per prompt, same prompts, same run.

    python benchmarks/census_throughput.py [--prompts 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptoss_viz import load_model  # noqa: E402
from gptoss_viz.census import Prompt, run_census  # noqa: E402
from gptoss_viz.runtime.checkpoints import REPO_ROOT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=300)
    args = ap.parse_args()
    lines = [ln for ln in (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8").splitlines()
             if len(ln.strip()) > 20]
    prompts = [Prompt(lines[i % len(lines)], "", i) for i in range(args.prompts)]
    result = {"date": time.strftime("%Y-%m-%d"), "prompts": len(prompts), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "models": {}}
    for name in ("gpt-oss-nano", "gpt2-nano"):
        model = load_model(name, dtype=torch.float32)
        run_census(model, prompts[:16])  # warm-up
        t = time.perf_counter()
        batched = run_census(model, prompts)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        run_census(model, prompts, batch_tokens=1)  # one prompt per forward pass
        t1 = time.perf_counter() - t
        toks = batched.stats["(all)"].tokens
        result["models"][name] = {"batched_prompts_per_s": round(len(prompts) / tb, 1),
                                  "one_by_one_prompts_per_s": round(len(prompts) / t1, 1),
                                  "speedup": round(t1 / tb, 2), "tokens": toks}
        print(f"{name}: {len(prompts) / tb:.1f} prompts/s batched ({toks / tb:,.0f} tokens/s), "
              f"{len(prompts) / t1:.1f} prompts/s one by one: {t1 / tb:.2f}x")
    out = REPO_ROOT / "benchmarks" / "results" / "census_throughput.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
