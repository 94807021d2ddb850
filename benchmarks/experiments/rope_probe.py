"""The attention kernel rotating q itself against rope_fused rotating q and k, in the whole 20b forward (issue 6).

With nothing listening at hook_q_rot the attention kernel rotates q itself and rope_fused rotates k alone
(Attention.rope_q_in_kernel, the default); off, each layer's rope_fused rotates both, as it does when a hook reads
the rotated q. Both variants in one process, alternating, each call after a 50 ms pause so both run at the same
clock: the eager forward (the benchmark's call: CUDA-event ms and the host's ms until it returned), and the same
forward replayed from a CUDA graph (the GPU's work, check_ids skipped); then whether the two variants' logits are
the same bits, and the kernels a forward launches (torch.profiler). Development probe.

    python benchmarks/experiments/rope_probe.py OUT.json [LENGTHS]
"""

import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from eager_gap_probe import timed
from probe_setup import capture, probe_setup

from gptoss_viz.runtime import gptoss as gptoss_mod


def set_rope(model, on: bool) -> None:
    for block in model.blocks:
        block.attn.rope_q_in_kernel = on


def kernels_a_forward(model, ids) -> int:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(ids)
        torch.cuda.synchronize()
    return sum(1 for ev in prof.events() if ev.device_type.name == "CUDA")


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024, 2048])
    real_check = gptoss_mod.check_ids
    for T, ids in prompts:
        row = {"T": T}
        graphs, logits = {}, {}
        with torch.inference_mode():
            for on in (True, False):
                set_rope(model, on)
                for _ in range(3):
                    model(ids)
                logits[on] = model(ids).clone()
                row[f"kernels_{'on' if on else 'off'}"] = kernels_a_forward(model, ids)
                gptoss_mod.check_ids = lambda *a, **k: None
                graphs[on], _ = capture(lambda: model(ids))
                gptoss_mod.check_ids = real_check
            times = {f"{what}_{v}": [] for what in ("eager", "eager_host", "graph") for v in ("on", "off")}
            for _ in range(9):
                for on in (True, False):
                    v = "on" if on else "off"
                    set_rope(model, on)
                    time.sleep(0.05)
                    ms, host = timed(lambda: model(ids))
                    times[f"eager_{v}"].append(ms)
                    times[f"eager_host_{v}"].append(host)
                    time.sleep(0.05)
                    times[f"graph_{v}"].append(timed(graphs[on].replay)[0])
            del graphs
        set_rope(model, True)
        row["logits_equal"] = torch.equal(logits[True], logits[False])
        row["times_ms"] = {k: [round(x, 3) for x in vs] for k, vs in times.items()}
        row["medians_ms"] = {k: round(statistics.median(vs), 3) for k, vs in times.items()}
        print(T, row["logits_equal"], row["kernels_on"], row["kernels_off"], row["medians_ms"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
