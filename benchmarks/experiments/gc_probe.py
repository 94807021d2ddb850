"""What Python's garbage collector costs the eager 20b forward (issue 6, thirtieth session; development probe).

`python benchmarks/experiments/gc_probe.py OUT.json [LENGTHS]` (default 1024): the random 20b model in GPU memory
(probe_setup), with transformers imported as in gpu_gptoss.py's process (its modules fill the collector's oldest
generation). For each length, in turns (`--rounds`, default 5), the eager forward `model(ids)` timed by CUDA events
after a 50 ms pause and straight after the previous one's synchronise (median of 9 each), under three settings:

- `default`: the collector as Python leaves it;
- `frozen`: `gc.freeze()` once before (everything alive then moves to a permanent generation that collections do
  not scan), collections still on;
- `off`: `gc.disable()` around the timed calls.

Also, through `gc.callbacks`, the collections that ran inside the timed forwards: how many of each generation a
forward, and their summed host time. Logits are compared bit for bit across settings.
"""

import gc
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from probe_setup import probe_setup  # noqa: E402  (puts benchmarks/ on the path)

from gpu_gptoss import event_ms  # noqa: E402


class Collections:
    """gc.callbacks entry: while `on`, each collection's generation and host seconds."""

    def __init__(self):
        self.on, self.started, self.runs = False, None, []

    def __call__(self, phase, info):
        if not self.on:
            return
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            self.runs.append((info["generation"], time.perf_counter() - self.started))
            self.started = None


def timed(fn, pause: bool) -> float:
    """fn's CUDA-event ms, after a 50 ms pause or straight after the previous call's synchronise."""
    torch.cuda.synchronize()
    if pause:
        time.sleep(0.05)
    return event_ms(fn)


def main() -> None:
    rounds = 5
    if "--rounds" in sys.argv:
        i = sys.argv.index("--rounds")
        rounds = int(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    try:  # as in gpu_gptoss.py's process: its modules' objects (the class import loads the lazy modules)
        importlib.import_module("transformers").GptOssForCausalLM
        have_hf = True
    except (ImportError, AttributeError):
        have_hf = False
    out, cfg, model, R, prompts = probe_setup([1024])
    R.update(transformers_imported=have_hf, thresholds=gc.get_threshold(), rounds=rounds)
    col = Collections()
    gc.callbacks.append(col)
    frozen = False
    with torch.inference_mode():
        for T, ids in prompts:
            for _ in range(2):
                model(ids)
            row = {"T": T, "objects_tracked": len(gc.get_objects())}
            stats = {name: {"pause_ms": [], "b2b_ms": [], "collections": [], "gc_ms": []}
                     for name in ("default", "frozen", "off")}
            logits = {}
            for _ in range(rounds):
                for name, st in stats.items():
                    if name == "frozen":  # (each round: default, then frozen and off on the frozen heap)
                        gc.freeze()
                        frozen = True
                    if name == "off":
                        gc.disable()
                    for pause in (True, False):
                        for _ in range(9):
                            del col.runs[:]
                            col.on = True
                            ms = timed(lambda: model(ids), pause)
                            col.on = False
                            st["pause_ms" if pause else "b2b_ms"].append(ms)
                            st["collections"].append([g for g, _ in col.runs])
                            st["gc_ms"].append(sum(s for _, s in col.runs) * 1e3)
                    gc.enable()
                    logits[name] = model(ids)
                if frozen:
                    gc.unfreeze()
                    frozen = False
            first = logits["default"]
            row["logits_equal"] = all(torch.equal(first, v) for v in logits.values())
            for name, st in stats.items():
                per = st["collections"]
                row[name] = {
                    "pause_median_ms": statistics.median(st["pause_ms"]),
                    "b2b_median_ms": statistics.median(st["b2b_ms"]),
                    "collections_a_forward": {g: sum(c.count(g) for c in per) / len(per) for g in (0, 1, 2)},
                    "gc_ms_a_forward_mean": statistics.mean(st["gc_ms"]),
                    "gc_ms_a_forward_max": max(st["gc_ms"]), **st}
                print(T, name, round(row[name]["pause_median_ms"], 3), round(row[name]["b2b_median_ms"], 3),
                      row[name]["collections_a_forward"], round(row[name]["gc_ms_a_forward_mean"], 3),
                      round(row[name]["gc_ms_a_forward_max"], 3), flush=True)
            R["lengths"].append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
