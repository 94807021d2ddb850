"""kernels/moe_hopper.py (decoded MXFP4 weights as wgmma's register operand) against moe.py's tuned Triton tables
on one full-size gpt-oss-20b (or, with --size 120b, 120b) MoE layer, same GPU, same run (issue 6).

    python benchmarks/moe_hopper.py --out benchmarks/results/moe_hopper_h200.json

Per token count: the layer with moe.py's tables, then with the Hopper kernels at the tile hopper_tile picks
("auto") and at other tiles; each variant's output against the table's (relative Frobenius difference and largest
absolute difference: 0 means bit-identical), the whole layer's time (CUDA events, median) and each launch's time
(torch.profiler, mean over 5 calls, in launch order: the schedule, [the row gather], gate_up, down, the k-sum).
`--decode one two` runs each Hopper tile with the one-multiply decode (variant name + " om"; the layer's scales
are all <= 128, which it needs) and with the two-multiply one (twelfth session).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms  # noqa: E402
from moe_variants import one_20b_layer, routed, run_moe  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402
from gptoss_viz.runtime.mxfp4 import (from_hopper_order, from_hopper_scales, to_hopper_order,  # noqa: E402
                                      to_hopper_scales)

H = moe_hopper.HopperTile
TILES = {"auto": None, "16": H(16, 0, 4), "16+16": H(16, 16, 4), "32": H(32, 0, 4), "32+16": H(32, 16, 4),
         "32+32": H(32, 32, 4), "64": H(64, 0, 4), "64+32": H(64, 32, 4), "128": H(128, 0, 3),
         "128+32": H(128, 32, 3), "128+32 s4": H(128, 32, 4), "128+64": H(128, 64, 3), "256": H(256, 0, 3),
         "64+32 s2 r128": H(64, 32, 2, 128), "64+32 s3 r128": H(64, 32, 3, 128), "64+32 s2 r96": H(64, 32, 2, 96),
         "64+32 s3 r112": H(64, 32, 3, 112), "32+16 s4 r96": H(32, 16, 4, 96), "32 s4 r96": H(32, 0, 4, 96),
         "128+32 s2 r128": H(128, 32, 2, 128), "128+32 s2": H(128, 32, 2), "128+64 s2 r128": H(128, 64, 2, 128),
         "128+32 r168": H(128, 32, 3, 168),
         "128+32 wide": H(128, 32, 3, 0, False), "128+64 wide": H(128, 64, 3, 0, False),
         "64+32 s3 r128 wide": H(64, 32, 3, 128, False),
         # 128 output features a program (HopperTile.halves = 2; eleventh session)
         "32+32 h2": H(32, 32, 4, 0, True, 2), "32+32 h2 r168": H(32, 32, 4, 168, True, 2),
         "32+16 h2": H(32, 16, 4, 0, True, 2), "32+32 s3 h2": H(32, 32, 3, 0, True, 2),
         "64+32 s3 h2 r168": H(64, 32, 3, 168, True, 2), "64+32 s2 h2 r168": H(64, 32, 2, 168, True, 2),
         "128+32 h2": H(128, 32, 3, 0, True, 2), "32+32 h1": H(32, 32, 4),
         # clusters of two programs sharing each activation tile by TMA multicast (twenty-fourth session; Triton 3.7)
         "128+32 c2": H(128, 32, 3, 0, False, 1, 2), "128+32 s2 c2": H(128, 32, 2, 0, False, 1, 2),
         "128+64 c2": H(128, 64, 3, 0, False, 1, 2), "64+32 s3 r128 c2": H(64, 32, 3, 128, False, 1, 2),
         "128+32 nonarrow": H(128, 32, 3, 0, False), "128+32 s2 nonarrow": H(128, 32, 2, 0, False)}
COUNTS = (1, 7, 128, 256, 512, 768, 1024, 2048, 4096)


def header() -> dict:
    """The results' date and versions."""
    return {"date": datetime.date.today().isoformat(), "env": {"gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "triton": __import__("triton").__version__}}


def hopper_layer(size: str = "20b"):
    """(config, MoE module, its gate_up and down blocks, then scales, in the Hopper order) of one 20b (or `size`)
    layer, random weights (the module keeps the checkpoint's order for moe.py's kernels)."""
    cfg, mlp = one_20b_layer(size)
    ex = mlp.experts
    gu, dn = to_hopper_order(ex.gate_up_proj_blocks), to_hopper_order(ex.down_proj_blocks)
    gus, dns = to_hopper_scales(ex.gate_up_proj_scales), to_hopper_scales(ex.down_proj_scales)
    assert torch.equal(from_hopper_order(gu), ex.gate_up_proj_blocks)
    assert torch.equal(from_hopper_scales(gus), ex.gate_up_proj_scales)
    return cfg, mlp, gu, dn, gus, dns


def launches_ms(fn, reps: int = 5) -> list:
    """[kernel name, mean GPU ms] for each launch of one call of fn, in launch order (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    evs = sorted((ev for ev in prof.events() if ev.device_type.name == "CUDA"), key=lambda ev: ev.time_range.start)
    per = len(evs) // reps
    return [[evs[i].name[:40], round(sum(evs[i + r * per].device_time for r in range(reps)) / reps / 1e3, 4)]
            for i in range(per)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--counts", type=int, nargs="*", default=list(COUNTS))
    ap.add_argument("--tiles", nargs="*", default=list(TILES))
    ap.add_argument("--size", default="20b", help="the layer's shape: 20b (32 experts) or 120b (128)")
    ap.add_argument("--decode", nargs="*", choices=("one", "two"), default=["one"],
                    help="the Hopper decode: one multiply (what the model runs at scales <= 128) and/or two")
    args = ap.parse_args()
    R = {**header(), "size": args.size, "counts": []}
    cfg, mlp, gu, dn, gus, dns = hopper_layer(args.size)
    ex = mlp.experts
    # what one call must read from memory at least: the packed expert weights (blocks + scales)
    R["weight_bytes"] = sum(t.numel() * t.element_size() for t in (gu, dn, gus, dns))
    d, E, k = cfg.hidden_size, cfg.num_local_experts, cfg.num_experts_per_tok
    if "one" in args.decode:
        assert max(int(gus.max()), int(dns.max())) <= 128, "the one-multiply decode needs scales <= 128"
    g = torch.Generator(device="cuda").manual_seed(2)
    for T in args.counts:
        x = torch.randn(T, d, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        rows = []
        with torch.inference_mode():
            table = lambda: run_moe(mlp, x, idx, w)  # noqa: E731
            base = table()
            rows.append({"variant": "moe.py table", "ms": gpu_ms(table, warmup=3, reps=9),
                         "launches": launches_ms(table)})
            for name, om in ((n, om) for n in args.tiles for om in args.decode):
                tile = TILES[name] or moe_hopper.hopper_tile(T * k / E, E)
                name = name + (" om" if om == "one" else "")

                def hop(tile=tile, om=om == "one"):
                    return moe_hopper.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,
                                                       ex.down_proj_bias, ex.limit, ex.alpha, tile=tile,
                                                       one_multiply=om)
                try:
                    out = hop()
                    row = {"variant": f"hopper {name}", "tile": list(tile),
                           "rel_diff": ((out.float() - base.float()).norm() / base.float().norm()).item(),
                           "max_abs_diff": (out.float() - base.float()).abs().max().item()}
                    if row["rel_diff"] < 1e-2:
                        row.update(ms=gpu_ms(hop, warmup=3, reps=9), launches=launches_ms(hop))
                except Exception as e:  # e.g. out of shared memory at a large tile: record, go on
                    row = {"variant": f"hopper {name}", "error": f"{type(e).__name__}: {str(e)[:300]}"}
                rows.append(row)
            rows.append({"variant": "moe.py table again", "ms": gpu_ms(table, warmup=3, reps=9)})
        for r in rows:
            mm = [round(v, 3) for n, v in r.get("launches", []) if "moe" in n or "gate" in n or "down" in n]
            print(T, r["variant"], r.get("tile", ""), round(r.get("ms", 0), 3), "gate_up, down:", mm,
                  "rel", r.get("rel_diff"), r.get("error", ""), flush=True)
        R["counts"].append({"tokens": T, "rows": rows})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
