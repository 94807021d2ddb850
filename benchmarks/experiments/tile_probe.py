"""The Hopper MoE kernels' GPU time inside the whole 20b forward (the random model's own routing, which is less
even than benchmarks/moe_hopper.py's single layer) at the tile hopper_tile picks and at others, same process,
alternating; each variant's logits against the rule's. Development probe (issue 6):
`tile_probe.py OUT.json LENGTH [LENGTH...]`."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from narrow_probe import moe_ms  # noqa: E402
from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

H = moe_hopper.HopperTile
RULE = moe_hopper.hopper_tile
VARIANTS = {"128+64": H(128, 64, 3), "128+16": H(128, 16, 3), "64+32 r128": H(64, 32, 3, 128),
            "64+64 r128": H(64, 64, 3, 128)}


def main() -> None:
    out, _, model, R, prompts = probe_setup([1024, 2048])
    for T, ids in prompts:
        times = {"rule": []} | {n: [] for n in VARIANTS}
        diffs = {}
        with torch.inference_mode():
            base = model(ids)
            for _ in range(2):
                for name in times:
                    tile = VARIANTS.get(name)
                    moe_hopper.hopper_tile = (lambda m, e=32, tile=tile: tile) if tile else RULE
                    try:
                        times[name].append(moe_ms(model, ids))
                        diffs[name] = (model(ids).float() - base.float()).abs().max().item()
                    except Exception as e:  # e.g. out of shared memory: record, go on
                        times[name].append(None)
                        diffs[name] = f"{type(e).__name__}: {e}"[:200]
        moe_hopper.hopper_tile = RULE
        row = {"T": T, "rule": list(RULE(T * 4 / 32)), "moe_ms": times, "max_abs_diff_vs_rule": diffs}
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
