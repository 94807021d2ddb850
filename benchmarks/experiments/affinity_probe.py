"""Does the core the host thread runs on set how fast it launches the 20b forward? The main thread pinned to one
logical CPU at a time (os.sched_setaffinity on the calling thread), in turn over all of them and unpinned, three
rounds: per CPU the host's launch time and the CUDA-event time of forwards back to back. sched_probe.py found the
host's launch time of the same 1024-token forward at 13.7-13.9 ms in some processes and 23-26 ms in others on one
machine. Also lscpu's view of the machine. Development probe (issue 6).

    python benchmarks/experiments/affinity_probe.py OUT.json [LENGTHS]
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"))

from eager_gap_probe import timed  # noqa: E402
from probe_setup import probe_setup  # noqa: E402


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    R["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    R["numa"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True).stdout
    allowed = sorted(os.sched_getaffinity(0))
    R["allowed_cpus"] = allowed
    for T, ids in prompts:
        res = {}
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            for rnd in range(3):
                for cpu in [None] + allowed:
                    os.sched_setaffinity(0, allowed if cpu is None else {cpu})
                    time.sleep(0.01)
                    model(ids)
                    torch.cuda.synchronize()
                    for _ in range(3):
                        event, host = timed(lambda: model(ids))
                        r = res.setdefault("all" if cpu is None else str(cpu), {"host_ms": [], "event_ms": []})
                        r["host_ms"].append(round(host, 3))
                        r["event_ms"].append(round(event, 3))
            os.sched_setaffinity(0, allowed)
        row = {"T": T, "per_cpu": res,
               "median": {k: [round(statistics.median(v["host_ms"]), 2), round(statistics.median(v["event_ms"]), 2)]
                          for k, v in res.items()}}
        print(T, "cpu: [host ms, event ms]", row["median"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
