"""Where the time of one gpt-oss-20b forward goes on the GPU (random packed weights built in GPU memory):
per prompt length, the forward's wall time, the GPU's busy time (sum of kernel times), the number of kernel
launches, and the kernels that take the most time, from torch.profiler. A diagnostic for issue 6.

    python benchmarks/profile_forward.py --out benchmarks/results/profile_forward.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import IdsOnly, gpu_ms  # noqa: E402

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="*", default=[128, 1024])
    ap.add_argument("--size", default="20b")
    ap.add_argument("--trace", action="store_true", help="profile gptoss_viz.trace.run_trace instead")
    args = ap.parse_args()
    cfg = gptoss_config(args.size)
    model = random_packed_model(cfg, "cuda", seed=1)
    model.prepare_kernels()  # as load_model does
    R = {"gpu": torch.cuda.get_device_name(), "size": args.size, "lengths": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in args.lengths:
        ids = torch.randint(0, 8000, (T,), device="cuda", generator=g)
        if args.trace:
            from gptoss_viz.trace import run_trace

            model.tokenizer = IdsOnly(ids.tolist())
            fn = lambda: run_trace(model, "x")  # noqa: E731
        else:
            fn = lambda: model(ids)  # noqa: E731
        with torch.inference_mode():
            ms = gpu_ms(fn, warmup=2, reps=5)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
        kernels = sorted(((e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
                          if e.self_device_time_total > 0), key=lambda x: -x[1])
        busy = sum(k[1] for k in kernels)
        launches = sum(k[2] for k in kernels)
        rec = {"T": T, "forward_ms": ms, "gpu_busy_ms": busy, "kernel_launches": launches,
               "top": [[name[:90], round(t, 3), n] for name, t, n in kernels[:25]]}
        R["lengths"].append(rec)
        print(f"T={T}: forward {ms:.2f} ms, GPU busy {busy:.2f} ms, {launches} kernel launches", flush=True)
        for name, t, n in kernels[:24]:
            print(f"   {t:8.3f} ms  {n:5d}x  {name[:100]}")
        cpu = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()),
                     key=lambda x: -x[1])[:10]
        rec["top_cpu"] = [[name[:90], round(t, 3), n] for name, t, n in cpu]
        print("   host side (self CPU ms):", "; ".join(f"{name[:40]} {t:.1f} x{n}" for name, t, n in cpu))
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
