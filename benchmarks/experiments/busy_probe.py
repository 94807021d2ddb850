"""Does the host launch a forward more slowly while the GPU is busy? Host time to launch a 20b forward (perf_counter
around the call) with the GPU idle when it starts, and with the GPU kept busy through the launches by a sleep kernel
queued first (torch.cuda._sleep, longer than the launches take), alternating in one process. At 128 tokens the
forward's own kernels leave the GPU mostly idle; at 1024 they keep it busy. Development probe (issue 6):
`python busy_probe.py OUT.json [LENGTHS]`."""

import json
import statistics
import time

import torch

from probe_setup import capturable, probe_setup


def cycles_per_ms() -> float:
    torch.cuda._sleep(10_000_000)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(100_000_000)
    end.record()
    end.synchronize()
    return 100_000_000 / start.elapsed_time(end)


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024])
    capturable(model)  # no check_ids: its copy of the ids to the host would wait for the sleep kernel
    per_ms = cycles_per_ms()
    R["sleep_cycles_per_ms"] = per_ms
    R["rows"] = []
    with torch.inference_mode():
        for T, ids in prompts:
            for _ in range(3):
                model(ids)
            host = {"GPU idle at the start": [], "GPU busy throughout (sleep kernel first)": []}
            for rep in range(25):
                for name in host:
                    torch.cuda.synchronize()
                    if "busy" in name:
                        torch.cuda._sleep(int(60 * per_ms))  # 60 ms of GPU time, queued before the forward
                    t0 = time.perf_counter()
                    model(ids)
                    host[name].append((time.perf_counter() - t0) * 1e3)
                    torch.cuda.synchronize()
            for name, v in host.items():
                row = {"T": T, "case": name, "host_ms_median": statistics.median(v), "host_ms_min": min(v)}
                R["rows"].append(row)
                print(json.dumps(row), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
