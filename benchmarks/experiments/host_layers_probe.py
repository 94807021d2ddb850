"""Where in the 20b forward the host spends its launch time: host clock stamps (perf_counter) at the forward's call,
at each block's entry and at the forward's return, no profiler; and the same forward's CUDA-event time. In three
states of the host before each call: after a 50 ms sleep (one request at a time), straight after the previous
forward's synchronise (the benchmark's calls back to back), and after 20 ms of the host's core kept busy (is the
first layers' slowness the core's clock or cache warming up?). Also the GPU's own time per block (CUDA events at
each block's entry, in separate forwards), so that each block's host time can be set against its GPU time.
Development probe (issue 6).

    python benchmarks/experiments/host_layers_probe.py OUT.json [LENGTHS]
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import probe_setup  # noqa: E402


def spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    x = 0
    while time.perf_counter() < end:
        x += 1


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    stamps: list = []
    mode = {"gpu": False}

    def stamp(_mod, _args, _kwargs=None):
        if mode["gpu"]:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            stamps.append(e)
        else:
            stamps.append(time.perf_counter())

    for b in model.blocks:
        b.register_forward_pre_hook(stamp)
    states = {"after 50 ms sleep": lambda: time.sleep(0.05), "back to back": lambda: None,
              "after 20 ms spin": lambda: spin(20)}
    for T, ids in prompts:
        row = {"T": T, "layers": len(model.blocks)}
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            torch.cuda.synchronize()
            res = {k: {"host_total_ms": [], "preamble_ms": [], "per_block_ms": [], "after_last_block_ms": [],
                       "event_ms": []} for k in states}
            for rep in range(9):
                for name, before in states.items():
                    torch.cuda.synchronize()
                    before()
                    stamps.clear()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t0 = time.perf_counter()
                    a.record()
                    model(ids)
                    t1 = time.perf_counter()
                    b.record()
                    b.synchronize()
                    r = res[name]
                    r["host_total_ms"].append((t1 - t0) * 1e3)
                    r["preamble_ms"].append((stamps[0] - t0) * 1e3)
                    r["per_block_ms"].append([(y - x) * 1e3 for x, y in zip(stamps, stamps[1:] + [t1])])
                    r["event_ms"].append(a.elapsed_time(b))
            summ = {}
            for name, r in res.items():
                blocks = list(zip(*r["per_block_ms"]))
                summ[name] = {
                    "event_ms": round(statistics.median(r["event_ms"]), 3),
                    "host_total_ms": round(statistics.median(r["host_total_ms"]), 3),
                    "preamble_ms": round(statistics.median(r["preamble_ms"]), 3),
                    "per_block_ms_median": [round(statistics.median(b), 3) for b in blocks],
                }
                print(T, name, summ[name], flush=True)
            row["host"] = summ
            row["raw"] = {k: {kk: vv for kk, vv in v.items() if kk != "per_block_ms"} for k, v in res.items()}
            # the GPU's time per block: events at each block's entry (their records add a little host time)
            mode["gpu"] = True
            gpu_blocks = []
            for rep in range(5):
                torch.cuda.synchronize()
                time.sleep(0.05)
                stamps.clear()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model(ids)
                b.record()
                b.synchronize()
                ev = [a] + stamps + [b]
                gpu_blocks.append([x.elapsed_time(y) for x, y in zip(ev, ev[1:])])
            mode["gpu"] = False
            row["gpu_per_segment_ms_median"] = [round(statistics.median(s), 3) for s in zip(*gpu_blocks)]
            print(T, "GPU: start->block0, block i -> i+1, last -> end", row["gpu_per_segment_ms_median"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
