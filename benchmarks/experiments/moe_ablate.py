"""Ablations of kernels/moe_hopper.py's K loop on one gpt-oss-20b layer (issue 6): what limits the MoE kernels?

    python benchmarks/experiments/moe_ablate.py OUT.json [TOKENS ...]

Needs experiments/moe_hopper_ablate.patch applied onto 2116252 (the kernel's ABL switch; results are wrong by
design): ABL 1 decodes the weights once and reuses them every K step (no per-step weight loads or decode); ABL 2
issues no activation copies (the wgmma reads whatever the shared memory holds); ABL 3 both; ABL 4 keeps the weight
loads but replaces the decode's arithmetic by one xor a word; ABL 8, 16, 24 load the scales, the words, both from
fake addresses at which a warp reads contiguous bytes (values wrong); 28: 24 and 4. Each variant's gate_up and
down kernel times (torch.profiler, mean of 5); runs of ABL 2 and 6 (no copies, fake decode) were in an earlier
version of the list (results/moe_ablate_h200*.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from moe_hopper import header, hopper_layer, launches_ms  # noqa: E402
from moe_variants import routed  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    counts = [int(a) for a in sys.argv[2:]] or [512, 1024, 2048, 4096]
    cfg, mlp, gu, dn = hopper_layer()
    ex = mlp.experts
    g = torch.Generator(device="cuda").manual_seed(2)
    R = {**header(), "counts": []}
    for T in counts:
        x = torch.randn(T, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        rows = []
        with torch.inference_mode():
            for abl in (0, 1, 3, 4, 8, 16, 24, 28, 0):
                tile = moe_hopper.hopper_tile(T * 4 / 32)
                if abl in (4, 8, 16, 24, 28) and not tile.maxnreg:
                    tile = tile._replace(maxnreg=168)  # ptxas took 206 registers: held to 3 programs an SM

                def hop(abl=abl, tile=tile):
                    return moe_hopper.moe_mxfp4_hopper(x, idx, w, gu, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                                                       dn, ex.down_proj_scales, ex.down_proj_bias, ex.limit,
                                                       ex.alpha, tile=tile, ablate=abl)
                ks = [t for n, t in launches_ms(hop) if "moe_hopper" in n]
                rows.append({"ablate": abl, "tile": list(tile), "gate_up_ms": ks[0], "down_ms": ks[1]})
                print(T, rows[-1], flush=True)
        R["counts"].append({"tokens": T, "tile": list(moe_hopper.hopper_tile(T * 4 / 32)), "rows": rows})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
