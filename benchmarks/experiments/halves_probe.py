"""The 120b forward with the Hopper MoE tile rule as it is (32+32 tiles of 128 output features a program,
HopperTile.halves = 2, for a mean of 4-63 rows an expert with 128 experts) and as it was before the eleventh
session (64 features a program at every mean: `features64`), same process, alternating (probe_setup.alternate):
the MoE kernels' GPU time inside the forward, the forward's time and whether the logits are equal bit for bit.
Development probe (issue 6): `halves_probe.py OUT.json [LENGTHS] [--size 20b]`. With `--size 20b` (twelfth
session, when the rule took two halves for 20b at a mean of 16-63 rows an expert, 128-511 tokens) the same for
20b."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import alternate, probe_setup, size_arg  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

RULE = moe_hopper.hopper_tile


def features64(m: float, n_experts: int = 32) -> moe_hopper.HopperTile:
    """hopper_tile without its two-halves branch: 64 output features a program at every mean (16+16 tiles below
    32 rows an expert, 32+32 up to 63, 16 alone below 16), as before the eleventh session."""
    tile = RULE(m, n_experts)
    if tile.halves == 1:
        return tile
    bt = 16 if m < 32 else 32
    return moe_hopper.HopperTile(bt, 0 if m < 16 else bt, 4)


RULES = {"64 features (before)": features64, "rule now": RULE}


def main() -> None:
    size = size_arg("120b")
    out, cfg, model, R, prompts = probe_setup([512, 1024, 1536, 2048] if size == "120b" else [256, 384], size=size)
    E = cfg.num_local_experts
    for T, ids in prompts:
        row = {"T": T, "tiles": {name: list(rule(T * 4 / E, E)) for name, rule in RULES.items()}}
        use = {name: (lambda rule=rule: setattr(moe_hopper, "hopper_tile", rule)) for name, rule in RULES.items()}
        alternate(model, ids, use, row)
        moe_hopper.hopper_tile = RULE
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
