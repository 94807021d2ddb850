"""Does gpu_gptoss.py's clock sampler (nvidia-smi every 20 ms, `Clocks`) slow the forward it watches? Our 20b forward
up to 1024 tokens is set by the host's launches, and NVML queries may hold the driver while they run. Forwards timed
as gpu_gptoss times them (CUDA events, back to back), plus the host's time to launch each, in blocks with no sampler
and with one running, alternating in one process. Development probe (issue 6): `python smi_probe.py OUT.json
[LENGTHS]`."""

import json
import statistics
import time

import torch

from probe_setup import probe_setup  # (puts benchmarks/ on the path)

from gpu_gptoss import Clocks  # noqa: E402


def block(model, ids, n: int = 10):
    host, total = [], []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        model(ids)
        host.append((time.perf_counter() - t0) * 1e3)
        end.record()
        end.synchronize()
        total.append(start.elapsed_time(end))
    return host, total


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024])
    R["rows"] = []
    with torch.inference_mode():
        for T, ids in prompts:
            for _ in range(3):
                model(ids)
            got = {"no sampler": ([], []), "nvidia-smi every 20 ms (Clocks)": ([], [])}
            for _ in range(4):
                for name, (host, total) in got.items():
                    torch.cuda.synchronize()
                    if name == "no sampler":
                        h, t = block(model, ids)
                    else:
                        with Clocks():
                            h, t = block(model, ids)
                    host += h
                    total += t
            for name, (host, total) in got.items():
                row = {"T": T, "case": name, "host_ms_median": statistics.median(host),
                       "forward_ms_median": statistics.median(total), "forward_ms_min": min(total),
                       "forward_ms_max": max(total)}
                R["rows"].append(row)
                print(json.dumps(row), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
