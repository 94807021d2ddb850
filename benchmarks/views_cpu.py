"""Prompt -> trace -> analysis -> every figure of every tab, both nano models, 512-token prompt, on the CPU.

Target (issue 4): under 1 s for both models together on the 2-core CI machine. Also reports the split between
the two forward passes (with their reductions) and building the figures, and the JSON payload size.

    python benchmarks/views_cpu.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import plotly.io as pio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptoss_viz import load_model  # noqa: E402
from gptoss_viz.figures import views  # noqa: E402
from gptoss_viz.runtime.checkpoints import REPO_ROOT  # noqa: E402
from gptoss_viz.trace import run_trace  # noqa: E402

TARGET_S = 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "views_cpu.json")
    args = ap.parse_args()
    oss, gpt2 = load_model("gpt-oss-nano", dtype=torch.float32), load_model("gpt2-nano", dtype=torch.float32)
    slice_text = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")
    text = gpt2.tokenizer.decode(gpt2.tokenizer.encode(slice_text)[:512])
    runs = []
    for i in range(args.repeat + 1):
        t0 = time.perf_counter()
        a, b = run_trace(oss, text), run_trace(gpt2, text)
        t1 = time.perf_counter()
        figs = views.build_all(a, b, views.Selection())
        t2 = time.perf_counter()
        if i:  # the first run warms up
            runs.append((t2 - t0, t1 - t0, t2 - t1))
    payload = sum(len(v) if isinstance(v, str) else len(pio.to_json(v)) for t in figs.values() for v in t.values())
    total, traces, figures = (statistics.median(r[j] for r in runs) for j in range(3))
    print(f"{a.T}-token prompt, both models: {total * 1e3:.0f} ms total ({total / TARGET_S:.2f} x the "
          f"{TARGET_S * 1e3:.0f} ms target): traces {traces * 1e3:.0f} ms, figures {figures * 1e3:.0f} ms; "
          f"{sum(len(t) for t in figs.values())} figures, {payload / 1e6:.2f} MB of JSON")
    result = {"date": time.strftime("%Y-%m-%d"), "tokens": a.T, "total_ms": round(total * 1e3),
              "traces_ms": round(traces * 1e3), "figures_ms": round(figures * 1e3),
              "vs_target": round(total / TARGET_S, 3), "payload_mb": round(payload / 1e6, 2),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
