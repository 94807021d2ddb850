"""The host's time to launch a 20b forward with kernels/launch.py's Launcher and without it (every launch through
the Triton JIT), alternating in one process, with the forward's time (CUDA events) and whether the logits agree
bit for bit. Development probe (issue 6, thirteenth session): `python launch_probe.py OUT.json [LENGTHS]`."""

import json
import statistics
import time

import torch

from probe_setup import probe_setup

from gptoss_viz.runtime.kernels.launch import Launcher


def host_ms(model, ids, reps: int = 7) -> list[float]:
    """Host time of each of `reps` forwards from its call to its return (the GPU queue is deep enough not to
    block a forward's ~340 launches), each after the GPU has gone idle."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(ids)
        out.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return out


def main() -> None:
    from gpu_gptoss import gpu_ms

    out, cfg, model, R, prompts = probe_setup([128, 512, 1024, 2048])
    for T, ids in prompts:
        row = {"T": T}
        logits = {}
        with torch.inference_mode():
            for _ in range(3):
                for name, on in (("jit", False), ("launcher", True)):
                    Launcher.enabled = on
                    model(ids)  # warm (the launcher's cache fills on its first call)
                    r = row.setdefault(name, {"host_ms": [], "forward_ms": []})
                    r["host_ms"] += host_ms(model, ids)
                    r["forward_ms"].append(gpu_ms(lambda: model(ids), warmup=1, reps=7))
                    logits[name] = model(ids)
        Launcher.enabled = True
        row["logits_equal"] = torch.equal(logits["jit"], logits["launcher"])
        for name in ("jit", "launcher"):
            row[name]["host_median_ms"] = statistics.median(row[name]["host_ms"])
            row[name]["forward_median_ms"] = statistics.median(row[name]["forward_ms"])
        print(T, {n: (round(row[n]["host_median_ms"], 2), round(row[n]["forward_median_ms"], 2))
                  for n in ("jit", "launcher")}, "equal", row["logits_equal"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
