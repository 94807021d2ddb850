"""How much longer the eager 20b forward takes than its own GPU work, and where the GPU waits in it.

The benchmark times `model(ids)` eagerly (CUDA events); gap_probe.py measured the GPU's work from a CUDA-graph
replay. This probe puts the two side by side in one process, alternating and each after a pause (so both run at
the same clock): eager with check_ids (the product's call), eager without it, and the graph's replay. Then it
records eager forwards under torch.profiler: per forward the kernels' busy time and the idle time between them,
the largest single waits (with their kernel's index), and, from one forward traced with the host's calls too,
each kernel's slack (GPU start minus the end of its launch on the host): a kernel that starts right after its
launch, after an idle gap, found the GPU waiting for the host. Development probe (issue 6).

    python benchmarks/experiments/eager_gap_probe.py OUT.json [LENGTHS]   (OUT's folder gets the host trace too)
"""

import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from gap_probe import kernel_events, short, split_runs  # noqa: E402
from probe_setup import capture, probe_setup  # noqa: E402

from gptoss_viz.runtime import gptoss as gptoss_mod  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(CUDA-event ms, host ms until fn returned) of one call, started on an idle, synchronised GPU."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    a.record()
    fn()
    host = (time.perf_counter() - t0) * 1e3
    b.record()
    b.synchronize()
    return a.elapsed_time(b), host


def run_stats(run) -> dict:
    span = run[-1][2] - run[0][1]
    busy = sum(e - s for _, s, e in run)
    gaps = collections.defaultdict(lambda: [0.0, 0])
    single = []
    for i, ((pn, _, pe), (n, s, e)) in enumerate(zip(run, run[1:])):
        g = gaps[short(pn) + " -> " + short(n)]
        g[0] += s - pe
        g[1] += 1
        single.append((round(s - pe, 1), i + 1, short(pn) + " -> " + short(n)))
    return {"kernels": len(run), "span_us": round(span, 1), "busy_us": round(busy, 1), "idle_us": round(span - busy, 1),
            "gaps_by_pair": sorted(([k, round(v[0], 1), v[1]] for k, v in gaps.items()), key=lambda x: -x[1])[:20],
            "largest_waits": sorted(single, reverse=True)[:15]}


def host_slack(trace_path: Path) -> dict:
    """From a chrome trace with host and GPU events: per kernel, GPU start minus the end of its launch call."""
    data = json.loads(trace_path.read_text())
    evs = data["traceEvents"] if isinstance(data, dict) else data
    launch, kern = {}, []
    for e in evs:
        cat = e.get("cat", "")
        corr = (e.get("args") or {}).get("correlation")
        if corr is None or "dur" not in e:
            continue
        if cat in ("cuda_runtime", "cuda_driver"):
            launch[corr] = (e["ts"], e["ts"] + e["dur"], e.get("name", ""))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            kern.append((e["ts"], e["ts"] + e["dur"], e.get("name", ""), corr))
    kern.sort()
    rows = []
    for (s, e, n, c), prev in zip(kern, [None] + kern[:-1]):
        idle = s - prev[1] if prev else 0.0
        lc = launch.get(c)
        slack = s - lc[1] if lc else None
        rows.append((short(n), round(idle, 1), None if slack is None else round(slack, 1)))
    # an idle gap before a kernel that started within 15 us of its launch's end: the GPU waited for the host
    host_bound = [r for r in rows if r[2] is not None and r[2] < 15 and r[1] > 2]
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for n, idle, _ in host_bound:
        by_name[n][0] += idle
        by_name[n][1] += 1
    first = kern[0][0] if kern else 0
    return {"kernels": len(rows), "span_us": round(kern[-1][1] - first, 1) if kern else 0,
            "idle_us": round(sum(r[1] for r in rows), 1),
            "idle_waiting_for_host_us": round(sum(r[1] for r in host_bound), 1),
            "waiting_for_host_by_kernel": sorted(([k, round(v[0], 1), v[1]] for k, v in by_name.items()),
                                                 key=lambda x: -x[1])[:20],
            "first_rows": rows[:12]}


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    real_check = gptoss_mod.check_ids
    for T, ids in prompts:
        row = {"T": T}
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            gptoss_mod.check_ids = lambda *a, **k: None
            graph, _ = capture(lambda: model(ids))
            gptoss_mod.check_ids = real_check
            times = {"eager": [], "eager_host": [], "eager_no_check": [], "eager_no_check_host": [], "graph": []}
            for _ in range(9):
                time.sleep(0.05)
                ms, host = timed(lambda: model(ids))
                times["eager"].append(ms)
                times["eager_host"].append(host)
                gptoss_mod.check_ids = lambda *a, **k: None
                time.sleep(0.05)
                ms, host = timed(lambda: model(ids))
                times["eager_no_check"].append(ms)
                times["eager_no_check_host"].append(host)
                gptoss_mod.check_ids = real_check
                time.sleep(0.05)
                times["graph"].append(timed(graph.replay)[0])
            row["times_ms"] = {k: [round(v, 3) for v in vs] for k, vs in times.items()}
            row["medians_ms"] = {k: round(statistics.median(vs), 3) for k, vs in times.items()}
            print(T, row["medians_ms"], flush=True)
            del graph

            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model(ids)
                    torch.cuda.synchronize()
                    time.sleep(0.02)
            row["eager_runs"] = [run_stats(r) for r in split_runs(kernel_events(prof), 5000)]
            for r in row["eager_runs"]:
                print(T, "eager kernels", r["kernels"], "span", r["span_us"], "busy", r["busy_us"], "idle",
                      r["idle_us"], flush=True)

            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model(ids)
                torch.cuda.synchronize()
            trace = out.with_name(out.stem + f"_host_trace_{T}.json")
            prof.export_chrome_trace(str(trace))
            row["host_traced_forward"] = host_slack(trace)
            h = row["host_traced_forward"]
            print(T, "host-traced: span", h["span_us"], "idle", h["idle_us"], "waiting for host",
                  h["idle_waiting_for_host_us"], h["waiting_for_host_by_kernel"][:6], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
