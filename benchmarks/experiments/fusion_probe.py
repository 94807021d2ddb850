"""GPU-side changes of the fast path, each switched off in turn, in one process (variants alternating, so that the
host's drift and the GPU's clock fall on all of them). `--set 17` (the seventeenth session's): the MoE's slots in
bf16 (fp32 before: `slot_dtype=torch.float32`), and each block's router and route in one launch
(fused.router_route_fused; apart: MoE.routing_fused_ok False, cuBLAS's two kernels and route_fused's launch, as
before). `--set 18` (the eighteenth session's, the default): the MoE schedule's grouping in the router's launch
and the rows gathered by group_rows_fused (apart: MoE.grouping_rows None, moe_schedule_fused's launch and
index_select, as before).

For each variant and length: the GPU's work (the forward captured in a CUDA graph, replays timed by CUDA events,
medians), its kernels (one replay under torch.profiler), the host's time to launch an eager forward and the
eager forward end to end (medians), and the logits against the product's. Development probe (issue 6):
`python fusion_probe.py OUT.json [LENGTHS] [--set 17|18]`."""

import functools
import json
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from probe_setup import capturable, capture, probe_setup, replay_ms

from gptoss_viz.runtime import gptoss
from gptoss_viz.runtime.kernels import moe_hopper

_hopper = moe_hopper.moe_mxfp4_hopper
_fused_ok = gptoss.MoE.routing_fused_ok
_grouping_rows = gptoss.MoE.grouping_rows


def put(fp32_slots: bool = False, apart: bool = False, no_grouping: bool = False) -> None:
    moe_hopper.moe_mxfp4_hopper = (functools.partial(_hopper, slot_dtype=torch.float32) if fp32_slots
                                   else _hopper)
    gptoss.MoE.routing_fused_ok = (lambda self, x: False) if apart else _fused_ok
    gptoss.MoE.grouping_rows = (lambda self, x: None) if no_grouping else _grouping_rows


SETS = {"17": {"product": (False, False, True), "fp32 slots": (True, False, True),
               "router apart": (False, True, True), "sixteenth session (both)": (True, True, True)},
        "18": {"product": (False, False, False), "schedule launch (seventeenth session)": (False, False, True)}}
which = sys.argv[sys.argv.index("--set") + 1] if "--set" in sys.argv else "18"
if "--set" in sys.argv:
    del sys.argv[sys.argv.index("--set"):sys.argv.index("--set") + 2]
VARIANTS = SETS[which]


def kernels(graph) -> tuple[int, float]:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
    return len(ev), sum(e.device_time for e in ev) / 1e3


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024])
    capturable(model)
    R["rows"], R["set"] = [], which
    with torch.inference_mode():
        for T, ids in prompts:
            graphs, logits = {}, {}
            for name, flags in VARIANTS.items():
                put(*flags)
                graphs[name], logits[name] = capture(lambda: model(ids))
            put()
            res = {name: {"replay": [], "host": [], "total": []} for name in VARIANTS}
            for rep in range(15):
                for name, flags in VARIANTS.items():
                    res[name]["replay"].append(replay_ms(graphs[name], 3))
                    put(*flags)
                    try:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        model(ids)
                        t1 = time.perf_counter()
                        torch.cuda.synchronize()
                        t2 = time.perf_counter()
                    finally:
                        put()
                    if rep:
                        res[name]["host"].append((t1 - t0) * 1e3)
                        res[name]["total"].append((t2 - t0) * 1e3)
            ref = logits["product"].float()  # (a graph's output holds its last replay's result)
            for name in VARIANTS:
                n, busy = kernels(graphs[name])
                got = logits[name].float()
                row = {"T": T, "variant": name, "replay_ms": statistics.median(res[name]["replay"]),
                       "replay_min_ms": min(res[name]["replay"]), "kernels": n, "kernels_busy_ms": busy,
                       "host_ms": statistics.median(res[name]["host"]),
                       "eager_ms": statistics.median(res[name]["total"]),
                       "logits_rel_err_vs_product": ((got - ref).norm() / ref.norm()).item(),
                       "top1_agree_vs_product": (got.argmax(-1) == ref.argmax(-1)).float().mean().item()}
                R["rows"].append(row)
                print(json.dumps(row), flush=True)
            del graphs, logits
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
