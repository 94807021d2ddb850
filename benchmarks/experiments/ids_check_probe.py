"""Host time of the range check of a forward's token ids (gptoss.check_ids' reduction) in ways that give the same
answer, each timed right after a 20b forward and its synchronise (where the forward's own check runs, with the
host's caches holding the layers' work, not the check's): the ids copied to the host and reduced there (the
current code), reduced on the GPU with the two values copied back, copied into a pinned buffer, and ids that are
on the host already (as the tokenizer makes them). Development probe (issue 6).

    python benchmarks/experiments/ids_check_probe.py OUT.json [LENGTHS]
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


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    pinned = {}

    def host_copy(ids):
        return [int(v) for v in torch.aminmax(ids.cpu())]

    def gpu_reduce(ids):
        return torch.stack(torch.aminmax(ids)).tolist()

    def pinned_copy(ids):
        buf = pinned.get(ids.numel())
        if buf is None:
            buf = pinned[ids.numel()] = torch.empty(ids.numel(), dtype=ids.dtype, pin_memory=True)
        buf.copy_(ids.reshape(-1), non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return [int(v) for v in torch.aminmax(buf)]

    for T, ids in prompts:
        ids_host = ids.cpu()
        variants = {"ids.cpu(), reduced on the host (current)": lambda: host_copy(ids),
                    "aminmax on the GPU, two values copied": lambda: gpu_reduce(ids),
                    "copied into a pinned buffer, reduced on the host": lambda: pinned_copy(ids),
                    "ids already on the host": lambda: host_copy(ids_host)}
        want = host_copy(ids)
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for _ in range(2):
                model(ids)
            for rep in range(25):
                for name, fn in variants.items():
                    model(ids)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    got = fn()
                    times[name].append((time.perf_counter() - t0) * 1e6)
                    assert got == want, (name, got, want)
        row = {"T": T, "median_us": {k: round(statistics.median(v), 1) for k, v in times.items()},
               "min_us": {k: round(min(v), 1) for k, v in times.items()}}
        print(T, row["median_us"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
