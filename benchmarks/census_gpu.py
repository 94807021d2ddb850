"""Census throughput at gpt-oss-20b shape on one GPU: random 20b weights built in GPU memory (MXFP4 experts
packed), the bundled tokenizer as a stand-in, batched census against one forward pass per prompt, same run.

    python benchmarks/census_gpu.py [--prompts 400] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptoss_viz.census import Prompt, run_census  # noqa: E402
from gptoss_viz.runtime.checkpoints import BUNDLED, REPO_ROOT  # noqa: E402
from gptoss_viz.runtime.configs import GptOssConfig  # noqa: E402
from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402
from gptoss_viz.runtime.tokenizer import load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "census_gpu.json")
    args = ap.parse_args()
    cfg: GptOssConfig = gptoss_config("20b")
    model = random_packed_model(cfg, "cuda")
    model.tokenizer = load_tokenizer(BUNDLED["gpt-oss-nano"], cfg)  # stand-in: ids < 8192 fit 20b's vocab
    model.source = "random gpt-oss-20b"
    lines = [ln for ln in (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8").splitlines()
             if len(ln.strip()) > 20]
    prompts = [Prompt(lines[i % len(lines)], "", i) for i in range(args.prompts)]
    run_census(model, prompts[:32])  # warm-up (Triton compiles)
    torch.cuda.synchronize()
    rows = {}
    for name, kw in (("batched", {}), ("one_by_one", {"batch_tokens": 1})):
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        r = run_census(model, prompts, **kw)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        rows[name] = {"seconds": round(s, 2), "prompts_per_s": round(len(prompts) / s, 1),
                      "tokens_per_s": round(r.stats["(all)"].tokens / s), "peak_gib": round(
                          torch.cuda.max_memory_allocated() / 2**30, 2)}
        print(f"{name}: {len(prompts) / s:.1f} prompts/s, {r.stats['(all)'].tokens / s:,.0f} tokens/s, "
              f"peak {rows[name]['peak_gib']} GiB, path {model.last_path}")
    rows["speedup"] = round(rows["one_by_one"]["seconds"] / rows["batched"]["seconds"], 2)
    out = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "prompts": len(prompts), **rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
