"""The sixteenth session's host-side changes, each switched off in turn, in one process (variants alternating, so
that the host's drift falls on all of them): host time to launch a 20b forward and its time end to end, and the
logits checked equal to the first variant's. Variants: the product as it is; hits launched through the compiled
kernel's CudaLauncher (`Launcher.call_c = False`); every block's input RMSNorm launched by the block instead of
coming from the MoE launch before it (an observing hook at each hook_resid_pre, which stops that); every launch
through Triton's JIT (`Launcher.enabled = False`). Development probe (issue 6):
`python lean_probe.py OUT.json [LENGTHS]`."""

import json
import statistics
import time

import torch

from probe_setup import probe_setup

from gptoss_viz.runtime.kernels.launch import Launcher


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024])
    resid_pre = [(f"blocks.{i}.hook_resid_pre", lambda x, hook: None) for i in range(1, cfg.num_hidden_layers)]
    variants = {
        "product": ({}, []),
        "CudaLauncher.__call__": ({"call_c": False}, []),
        "input norms launched by the blocks": ({}, resid_pre),
        "through the JIT": ({"enabled": False}, []),
    }
    R["rows"] = []
    with torch.inference_mode():
        for T, ids in prompts:
            times = {name: ([], []) for name in variants}
            ref = None
            for rep in range(25):
                for name, (flags, hooks) in variants.items():
                    for k, v in flags.items():
                        setattr(Launcher, k, v)
                    try:
                        with model.hooks(hooks):
                            if rep == 0:
                                model(ids)  # warm
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            logits = model(ids)
                            t1 = time.perf_counter()
                            torch.cuda.synchronize()
                            t2 = time.perf_counter()
                    finally:
                        Launcher.call_c = Launcher.enabled = True
                    if ref is None:
                        ref = logits
                    assert torch.equal(logits, ref), f"{name}: the logits changed"
                    if rep:
                        times[name][0].append((t1 - t0) * 1e3)
                        times[name][1].append((t2 - t0) * 1e3)
            for name, (host, total) in times.items():
                row = {"T": T, "variant": name, "host_ms": statistics.median(host),
                       "total_ms": statistics.median(total), "host_min_ms": min(host)}
                R["rows"].append(row)
                print(json.dumps(row), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
