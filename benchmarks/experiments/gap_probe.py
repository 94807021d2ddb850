"""Where the 20b forward's GPU time goes between kernels: one forward captured in a CUDA graph and replayed under
torch.profiler, each kernel's start and end on the GPU's clock; the idle time before each kernel, summed by the
pair (previous kernel, kernel), and the kernels' own time by name. Also the SM clock and power the GPU ran at
while replaying (nvidia-smi, sampled every 50 ms), so that kernel times can be read as cycles.
Development probe (issue 6).

    python benchmarks/experiments/gap_probe.py OUT.json [LENGTHS]
"""

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import capturable, capture, probe_setup  # noqa: E402


def short(name: str) -> str:
    """A kernel's name cut to what tells kernels apart."""
    name = name.split("(")[0].replace("void ", "")
    return name[:60]


def kernel_events(prof) -> list[tuple[str, float, float]]:
    """A profile's GPU events (kernels, copies, memsets) as (name, start us, end us), by start."""
    return sorted(((e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type.name == "CUDA"), key=lambda x: x[1])


def split_runs(ev, gap_us: float) -> list[list[tuple[str, float, float]]]:
    """Events cut into runs wherever the GPU was idle for more than gap_us (one run a forward or replay)."""
    runs, cur = [], []
    for e in ev:
        if cur and e[1] - cur[-1][2] > gap_us:
            runs.append(cur)
            cur = []
        cur.append(e)
    if cur:
        runs.append(cur)
    return runs


def timeline(graph, replays: int = 5) -> list[list[tuple[str, float, float]]]:
    """Per replay, its kernels as (name, start us, end us), in order."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
            torch.cuda.synchronize()
            time.sleep(0.002)  # a gap that splits the replays apart
    return split_runs(kernel_events(prof), 1000)  # > 1 ms idle: the next replay


def clocks(graph, seconds: float = 3.0) -> dict:
    """SM clock (MHz) and power (W) while replaying the graph back to back for `seconds`."""
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    t0 = time.time()
    n = 0
    while time.time() - t0 < seconds:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        n += 10
    smi.terminate()
    rows = [r.split(",") for r in smi.communicate()[0].strip().splitlines()]
    mhz = [float(r[0]) for r in rows if len(r) == 2]
    watts = [float(r[1]) for r in rows if len(r) == 2]
    return {"replays": n, "sm_mhz": mhz, "watts": watts}


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    capturable(model)
    for T, ids in prompts:
        with torch.inference_mode():
            graph, _ = capture(lambda: model(ids))
            runs = timeline(graph)
            row = {"T": T, "replays": []}
            for run in runs:
                span = run[-1][2] - run[0][1]
                busy = sum(e - s for _, s, e in run)
                gaps = collections.defaultdict(lambda: [0.0, 0])
                own = collections.defaultdict(lambda: [0.0, 0])
                for (pn, _, pe), (n, s, e) in zip(run, run[1:]):
                    g = gaps[short(pn) + " -> " + short(n)]
                    g[0] += s - pe
                    g[1] += 1
                for n, s, e in run:
                    o = own[short(n)]
                    o[0] += e - s
                    o[1] += 1
                row["replays"].append({
                    "kernels": len(run), "span_us": span, "busy_us": busy, "idle_us": span - busy,
                    "gaps": sorted(([k, round(v[0], 1), v[1]] for k, v in gaps.items()), key=lambda x: -x[1])[:25],
                    "own": sorted(([k, round(v[0], 1), v[1]] for k, v in own.items()), key=lambda x: -x[1])})
                print(T, "kernels", len(run), "span", round(span), "busy", round(busy), flush=True)
            row["clocks"] = clocks(graph)
            c = row["clocks"]
            print("replays", c["replays"], "MHz", sorted(c["sm_mhz"])[len(c["sm_mhz"]) // 2] if c["sm_mhz"] else None,
                  "W", max(c["watts"]) if c["watts"] else None, flush=True)
            R["lengths"].append(row)
            del graph
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
