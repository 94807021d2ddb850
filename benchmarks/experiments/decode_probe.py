"""The whole forward with the Hopper MoE kernels' one-multiply decode (what the model runs when every scale of a
layer is <= 128) and with the two-multiply decode, same process, alternating (every layer's
`Experts.one_multiply` flipped): the MoE kernels' GPU time inside the forward (torch.profiler, mean of 3
forwards), the forward's time (CUDA events, median of 5) and whether the logits are equal bit for bit.
Development probe (issue 6, twelfth session): `decode_probe.py OUT.json [LENGTHS] [--size 120b]`."""

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


def main() -> None:
    size = "20b"
    if "--size" in sys.argv:
        i = sys.argv.index("--size")
        size = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    out, cfg, model, R, prompts = probe_setup([512, 1024, 2048], size=size)
    experts = [b.mlp.experts for b in model.blocks]
    R["size"] = size
    R["scales_allow_one_multiply"] = [ex.one_multiply for ex in experts]
    assert all(R["scales_allow_one_multiply"]), "a layer holds a scale above 128"
    variants = {"one multiply": True, "two multiplies": False}
    for T, ids in prompts:
        row = {"T": T}
        logits = {}
        with torch.inference_mode():
            for _ in range(3):
                for name, om in variants.items():
                    for ex in experts:
                        ex.one_multiply = om
                    row.setdefault(name, {"moe_ms": [], "forward_ms": []})
                    row[name]["moe_ms"].append(moe_ms(model, ids))
                    row[name]["forward_ms"].append(gpu_ms(lambda: model(ids), warmup=1))
                    logits[name] = model(ids)
        for ex in experts:
            ex.one_multiply = True
        row["logits_equal"] = torch.equal(*logits.values())
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
