"""How the random 20b model's routing spreads each layer's rows over the experts, and how many tiles (and of what
fill) the Hopper MoE schedule cuts them into. Development probe (issue 6): `routing_probe.py OUT.json [LENGTHS]`."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels.moe_hopper import hopper_tile  # noqa: E402


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([128, 1024, 2048])
    E, k = cfg.num_local_experts, cfg.num_experts_per_tok
    for T, ids in prompts:
        with torch.inference_mode():
            _, cache = model.run_with_cache(ids, names_filter=r"blocks\.\d+\.mlp\.hook_expert_idx")
        tile = hopper_tile(T * k / E, E)
        layers = []
        for name, idx in cache.items():
            counts = torch.bincount(idx.reshape(-1), minlength=E).tolist()
            bm = tile.bt + tile.bx
            fills = []  # rows of each tile the schedule cuts
            for c in counts:
                while c > 0:
                    fills.append(min(c, bm))
                    c -= bm
            layers.append({"layer": name, "counts": counts, "tile_rows": fills})
        R["lengths"].append({"T": T, "tile": list(tile), "layers": layers})
        print(T, tile, "tiles a layer:", [len(l["tile_rows"]) for l in layers], flush=True)
    out.write_text(json.dumps(R))


if __name__ == "__main__":
    main()
