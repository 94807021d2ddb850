"""The full trace's cost over the plain forward, both timed the same way (host wall clock from launch to the GPU's
end), interleaved, many times, so that the host's drifting speed hits both alike. Development probe (issue 6):
`trace_ratio_probe.py OUT.json [LENGTHS]`."""

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from gpu_gptoss import IdsOnly, trace_pairs  # noqa: E402
from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.trace import run_trace  # noqa: E402


def main() -> None:
    out, _, model, R, prompts = probe_setup([1024, 2048])
    for T, ids in prompts:
        model.tokenizer = IdsOnly(ids.tolist())
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
                run_trace(model, "x")
            fwd, trace, wall = trace_pairs(model, ids, 15)  # wall: all of run_trace, the Trace's copies too
        ratios = [t / f for t, f in zip(trace, fwd)]
        row = {"T": T, "forward_ms": [round(v, 2) for v in fwd], "full_trace_ms": [round(v, 2) for v in trace],
               "median_forward_ms": statistics.median(fwd), "median_full_trace_ms": statistics.median(trace),
               "run_trace_wall_ms": [round(v, 2) for v in wall], "median_run_trace_wall_ms": statistics.median(wall),
               "median_ratio": statistics.median(ratios), "ratio_of_medians":
               statistics.median(trace) / statistics.median(fwd)}
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
