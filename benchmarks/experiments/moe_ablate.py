"""Ablations of kernels/moe_hopper.py's K loop on one gpt-oss-20b layer (issue 6): what limits the MoE kernels?

    GPTOSS_MOE_ABLATE=N python benchmarks/experiments/moe_ablate.py OUT.json [TOKENS ...]

Needs experiments/moe_hopper_ablate_v2.patch applied onto a13d274 (the kernel's `_ABL` switch, read from
GPTOSS_MOE_ABLATE when the module is imported; results are wrong by design): 1 decodes no weights (a constant A
operand; the weight words and scales still come by TMA), 2 issues no activation copies (the wgmma reads whatever
the stages hold), 3 both. Run once per value, each in its own process (and Triton cache directory). Each count's
gate_up and down kernel times at hopper_tile's choice (torch.profiler, mean of 5; gate_up as clusters of two
where Triton 3.7 has them, as in the product).

(The first version of this script, for experiments/moe_hopper_ablate.patch onto 2116252, had more variants: see
RESULTS.md, seventh session.)
"""

from __future__ import annotations

import json
import os
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
    abl = int(os.environ.get("GPTOSS_MOE_ABLATE", "0"))
    cfg, mlp, gu, dn, gus, dns = hopper_layer()
    ex = mlp.experts
    g = torch.Generator(device="cuda").manual_seed(2)
    R = {**header(), "ablate": abl, "counts": []}
    for T in counts:
        x = torch.randn(T, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        with torch.inference_mode():
            def hop():
                return moe_hopper.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,
                                                   ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=True)
            ks = [t for n, t in launches_ms(hop) if "moe_hopper" in n]
        rec = {"tokens": T, "tile": list(moe_hopper.hopper_tile(T * 4 / 32)), "gate_up_ms": ks[0], "down_ms": ks[1]}
        R["counts"].append(rec)
        print(abl, rec, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
