"""The whole forward with the Hopper MoE kernels' one-multiply decode (what the model runs when every scale of a
layer is <= 128) and with the two-multiply decode, same process, alternating (every layer's
`Experts.one_multiply` flipped): the MoE kernels' GPU time inside the forward (torch.profiler, mean of 3
forwards), the forward's time (CUDA events, median of 5) and whether the logits are equal bit for bit.
Development probe (issue 6, twelfth session): `decode_probe.py OUT.json [LENGTHS] [--size 120b]`."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from probe_setup import alternate, probe_setup, size_arg  # noqa: E402


def main() -> None:
    size = size_arg("20b")
    out, cfg, model, R, prompts = probe_setup([512, 1024, 2048], size=size)
    experts = [b.mlp.experts for b in model.blocks]
    R["size"] = size
    R["scales_allow_one_multiply"] = [ex.one_multiply for ex in experts]
    assert all(R["scales_allow_one_multiply"]), "a layer holds a scale above 128"
    variants = {"one multiply": True, "two multiplies": False}

    def use(om: bool):
        for ex in experts:
            ex.one_multiply = om

    for T, ids in prompts:
        row = alternate(model, ids, {name: (lambda om=om: use(om)) for name, om in variants.items()}, {"T": T})
        use(True)
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
