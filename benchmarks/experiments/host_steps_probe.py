"""The host's time between the 20b forward's launches, step by step: host clock stamps (perf_counter) at the call,
around check_ids and the embedding, at each block's entry, at every Triton launch (Launcher._launch) and every
F.linear (the cuBLAS projections), and at the return. Each interval is named by the stamps around it; the first
block's intervals are set against the same intervals' median over blocks 4-21, to find what the first layer
does on the host that later ones do not (eager_gap_probe.py: the GPU waits for the host mostly in the first
layer). States before each call: a 50 ms sleep, or straight after the previous forward's synchronise; each also
with a sleep kernel queued after check_ids (the GPU busy for 3 ms: is the first layer's host time longer because
the GPU is idle while it launches?).
Development probe (issue 6).

    python benchmarks/experiments/host_steps_probe.py OUT.json [LENGTHS]
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from busy_probe import cycles_per_ms  # noqa: E402
from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.runtime import gptoss as gptoss_mod  # noqa: E402
from gptoss_viz.runtime.kernels import launch as launch_mod  # noqa: E402

STAMPS: list = []


def stamped(name, fn):
    def wrapper(*a, **k):
        STAMPS.append((name + ">", time.perf_counter()))
        out = fn(*a, **k)
        STAMPS.append((name + "<", time.perf_counter()))
        return out
    return wrapper


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    real_check = stamped("check_ids", gptoss_mod.check_ids)
    busy = {"cycles": 0}

    def check_ids(*a, **k):  # with busy["cycles"], a sleep kernel keeps the GPU busy from here on
        real_check(*a, **k)
        if busy["cycles"]:
            torch.cuda._sleep(busy["cycles"])

    gptoss_mod.check_ids = check_ids
    real_linear = F.linear
    F.linear = stamped("linear", real_linear)
    real_launch = launch_mod.Launcher._launch

    def launch(self, grid, *a, **k):
        STAMPS.append(("launch " + getattr(self.fn, "__name__", "?"), time.perf_counter()))
        return real_launch(self, grid, *a, **k)

    launch_mod.Launcher._launch = launch
    model.embed_tokens.register_forward_pre_hook(lambda *a: STAMPS.append(("embed>", time.perf_counter())))
    model.embed_tokens.register_forward_hook(lambda *a: STAMPS.append(("embed<", time.perf_counter())))
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(lambda *a, i=i: STAMPS.append((f"BLOCK {i}", time.perf_counter())))
    per_ms = cycles_per_ms()

    def state(pause: bool, gpu_busy_ms: float):
        def before():
            busy["cycles"] = int(gpu_busy_ms * per_ms)
            if pause:
                time.sleep(0.05)
        return before

    states = {"after 50 ms sleep": state(True, 0), "back to back": state(False, 0),
              "after 50 ms sleep, GPU busy 3 ms after check_ids": state(True, 3),
              "back to back, GPU busy 3 ms after check_ids": state(False, 3)}
    for T, ids in prompts:
        row = {"T": T}
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            runs = {k: [] for k in states}
            for rep in range(9):
                for name, before in states.items():
                    torch.cuda.synchronize()
                    before()
                    STAMPS.clear()
                    t0 = time.perf_counter()
                    model(ids)
                    t1 = time.perf_counter()
                    torch.cuda.synchronize()
                    runs[name].append([("CALL", t0)] + list(STAMPS) + [("RETURN", t1)])
        for name, rs in runs.items():
            # split each run into the preamble, blocks and the tail, each a list of (interval name, us)
            per_run = []
            for st in rs:
                parts, cur, label = {}, [], "preamble"
                for (n0, t0), (n1, t1) in zip(st, st[1:]):
                    if n1.startswith("BLOCK"):
                        cur.append((f"{n0} -> (block entry)", (t1 - t0) * 1e6))
                        parts[label] = cur
                        cur, label = [], n1
                        continue
                    cur.append((f"{n0} -> {n1}", (t1 - t0) * 1e6))
                parts[label] = cur
                per_run.append(parts)
            L = len(model.blocks)
            summary = {"host_total_us": round(statistics.median((st[-1][1] - st[0][1]) * 1e6 for st in rs), 1)}
            for part in ["preamble", "BLOCK 0", "BLOCK 1", f"BLOCK {L - 1}"]:
                steps = list(zip(*[r[part] for r in per_run]))
                summary[part] = [[s[0][0], round(statistics.median(x for _, x in s), 1)] for s in steps]
                summary[part + " total_us"] = round(statistics.median(sum(x for _, x in r[part]) for r in per_run), 1)
            def keyed(steps):  # (step name, its occurrence in the block) -> us
                seen, outk = {}, {}
                for n, x in steps:
                    seen[n] = seen.get(n, 0) + 1
                    outk[(n, seen[n])] = x
                return outk

            steady_k = {}
            for r in per_run:
                for b in range(4, L - 2):
                    for kk, x in keyed(r[f"BLOCK {b}"]).items():
                        steady_k.setdefault(kk, []).append(x)
            first = keyed(summary["BLOCK 0"])
            steady = [round(statistics.median(steady_k[kk]), 1) if kk in steady_k else None for kk in first]
            summary["steady (blocks 4-21) median per step"] = steady
            summary["steady total_us"] = round(statistics.median(
                sum(x for _, x in r[f"BLOCK {b}"]) for r in per_run for b in range(4, L - 2)), 1)
            row[name] = summary
            print(T, name, "host total", summary["host_total_us"], "preamble", summary["preamble total_us"],
                  "block0", summary["BLOCK 0 total_us"], "block1", summary["BLOCK 1 total_us"], "steady",
                  summary["steady total_us"], flush=True)
            print("  preamble:", summary["preamble"], flush=True)
            print("  block 0 / steady:", [[step, b0, s] for (step, b0), s in zip(summary["BLOCK 0"], steady)],
                  flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
