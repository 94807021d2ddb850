"""The 120b forward with the Hopper MoE tile rule as it is (32+32 tiles of 128 output features a program,
HopperTile.halves = 2, for a mean of 16-63 rows an expert with 128 experts) and as it was before the eleventh
session (the same rule for 32 experts: 64 features a program), same process, alternating: the MoE kernels' GPU
time inside the forward (torch.profiler, mean of 3 forwards), the forward's time (CUDA events, median of 5) and
whether the logits are equal bit for bit. Development probe (issue 6): `halves_probe.py OUT.json [LENGTHS]`."""

import json
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

RULE = moe_hopper.hopper_tile
RULES = {"64 features (before)": lambda m, n_experts=32: RULE(m, 32), "rule now": RULE}


def moe_ms(model, ids) -> float:
    """Summed GPU ms of the MoE kernels in one forward (mean of 3)."""
    model(ids)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
    return sum(ev.device_time for ev in prof.events() if ev.device_type.name == "CUDA"
               and "moe_hopper" in ev.name) / 3 / 1e3


def forward_ms(model, ids, reps: int = 5) -> float:
    """Median of `reps` forwards, CUDA events, after one more."""
    model(ids)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        model(ids)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([512, 1024, 1536, 2048], size="120b")
    E = cfg.num_local_experts
    for T, ids in prompts:
        row = {"T": T, "tiles": {name: list(rule(T * 4 / E, E)) for name, rule in RULES.items()}}
        logits = {}
        with torch.inference_mode():
            for _ in range(3):
                for name, rule in RULES.items():
                    moe_hopper.hopper_tile = rule
                    row.setdefault(name, {"moe_ms": [], "forward_ms": []})
                    row[name]["moe_ms"].append(moe_ms(model, ids))
                    row[name]["forward_ms"].append(forward_ms(model, ids))
                    logits[name] = model(ids)
        moe_hopper.hopper_tile = RULE
        row["logits_equal"] = torch.equal(*logits.values())
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
