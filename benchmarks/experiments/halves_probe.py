"""The 120b forward with the Hopper MoE tile rule as it is (32+32 tiles of 128 output features a program,
HopperTile.halves = 2, for a mean of 4-63 rows an expert with 128 experts) and as it was before the eleventh
session (the same rule for 32 experts: 64 features a program), same process, alternating: the MoE kernels' GPU
time inside the forward (torch.profiler, mean of 3 forwards), the forward's time (CUDA events, median of 5) and
whether the logits are equal bit for bit. Development probe (issue 6): `halves_probe.py OUT.json [LENGTHS]`.
With `--size 20b` (twelfth session): the 20b forward with the rule as it is (the same tiles for a mean of 16-63
rows an expert, 128-511 tokens) and as it was (16+16 or 32+32 tiles of 64 features there)."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from gpu_gptoss import gpu_ms  # noqa: E402
from probe_setup import moe_ms, probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

RULE = moe_hopper.hopper_tile
H = moe_hopper.HopperTile
RULES_BY_SIZE = {
    "120b": {"64 features (before)": lambda m, n_experts=32: RULE(m, 32), "rule now": RULE},
    "20b": {"64 features (before)": lambda m, n_experts=32: (H(16, 16, 4) if m < 32 else H(32, 32, 4))
            if 16 <= m < 64 else RULE(m, n_experts), "rule now": RULE}}


def main() -> None:
    size = "120b"
    if "--size" in sys.argv:
        i = sys.argv.index("--size")
        size = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    RULES = RULES_BY_SIZE[size]
    out, cfg, model, R, prompts = probe_setup([512, 1024, 1536, 2048] if size == "120b" else [256, 384], size=size)
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
                    row[name]["forward_ms"].append(gpu_ms(lambda: model(ids), warmup=1))
                    logits[name] = model(ids)
        moe_hopper.hopper_tile = RULE
        row["logits_equal"] = torch.equal(*logits.values())
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
