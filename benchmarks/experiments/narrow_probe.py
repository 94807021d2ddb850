"""The Hopper MoE kernels' GPU time inside the whole 20b forward with narrow tiles (HopperTile.narrow) on and off,
same process, alternating, and the logits of the two (they should be equal bit for bit). Development probe
(issue 6): `narrow_probe.py OUT.json [LENGTHS]`."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import moe_ms, probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

RULE = moe_hopper.hopper_tile


def main() -> None:
    out, _, model, R, prompts = probe_setup([512, 1024, 2048, 4096])
    for T, ids in prompts:
        times = {True: [], False: []}
        logits = {}
        with torch.inference_mode():
            for _ in range(3):
                for narrow in (False, True):
                    moe_hopper.hopper_tile = lambda m, e=32, narrow=narrow: RULE(m, e)._replace(narrow=narrow)
                    times[narrow].append(moe_ms(model, ids))
                    logits[narrow] = model(ids)
        moe_hopper.hopper_tile = RULE
        row = {"T": T, "tile": list(RULE(T * 4 / 32)), "moe_ms_wide": times[False], "moe_ms_narrow": times[True],
               "logits_equal": torch.equal(logits[True], logits[False])}
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
