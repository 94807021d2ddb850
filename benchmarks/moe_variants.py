"""Sweep of the MXFP4 MoE kernel's variants on one full-size gpt-oss layer (issue 6), to choose moe.py's tables.

    python benchmarks/moe_variants.py --out benchmarks/results/moe_variants_subtiles.json

One 20b MoE layer (32 experts, 120b has 128 of the same shape) with random packed weights built in GPU memory;
per token count, the tile class the kernel's rule picks (_tile_class), and per kernel (gate_up, down) a list of
candidate Tiles (moe.Tile: sub-tile rows BM, BN, BK, warps, stages, SWAP, sub-tiles per program NSUB), each timed
inside the whole layer with the other kernel held at the table's tile, so differences between a kernel's rows are
that kernel's; `--repeat` times each twice, in two passes (one tile's timings move by up to ~10% between them).
`--decodes` adds rows for other MXFP4 decodes (0: via fp16/fp32; 2 and 3: PTX on bf16 pairs, with two multiplies
or one) on the table's tiles. Each variant's output is checked against the table's before it is timed. Also prints
each count's bound on this GPU: the layer's FLOPs at the measured bf16 matmul rate and its packed weight bytes at
the measured copy bandwidth (the larger of the two).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms, phase_ceilings  # noqa: E402

from gptoss_viz.runtime.kernels import moe as kmoe  # noqa: E402
from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402

log = logging.getLogger("moe_variants")

T_ = kmoe.Tile
CANDIDATES = {  # tile class -> candidate Tiles (for both kernels)
    16: [T_(16, 64, 64, 4, 3, True), T_(16, 128, 64, 4, 3, True), T_(16, 64, 128, 4, 3, True)],
    32: [T_(32, 128, 128, 8, 3, True), T_(32, 64, 64, 4, 3, True), T_(32, 128, 64, 8, 3, True),
         T_(16, 64, 64, 4, 3, nsub=2), T_(16, 128, 64, 4, 3, nsub=3)],
    64: [T_(64, 64, 128, 4, 3), T_(64, 128, 64, 8, 3), T_(32, 64, 64, 4, 3, nsub=2), T_(32, 128, 64, 8, 3, nsub=3),
         T_(32, 64, 128, 4, 3, nsub=3)],
    128: [T_(128, 128, 64, 8, 4), T_(128, 64, 64, 8, 3), T_(64, 64, 64, 4, 3),
          T_(64, 128, 64, 8, 3, nsub=2), T_(64, 64, 64, 4, 3, nsub=2), T_(32, 128, 64, 8, 3, nsub=3),
          T_(32, 64, 64, 4, 3, nsub=3), T_(64, 128, 64, 8, 3, nsub=3)],
    256: [T_(128, 128, 64, 8, 4), T_(128, 64, 64, 8, 3), T_(128, 64, 64, 4, 3), T_(128, 64, 64, 4, 2),
          T_(128, 128, 64, 4, 3), T_(128, 64, 128, 4, 2), T_(64, 128, 64, 8, 3, nsub=3), T_(64, 64, 64, 4, 3, nsub=3),
          T_(64, 64, 64, 4, 2, nsub=3), T_(64, 128, 64, 8, 3, nsub=2), T_(64, 64, 64, 4, 2, nsub=2)],
}
COUNTS = (128, 512, 1024, 2048, 4096)


def one_20b_layer(size: str = "20b"):
    """(config, MoE module) of one gpt-oss-20b layer (or of `size`'s) with random packed weights built in GPU
    memory."""
    cfg = gptoss_config(size, num_hidden_layers=1, vocab_size=2048)
    return cfg, random_packed_model(cfg, "cuda", seed=1).blocks[0].mlp


def routed(mlp, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's own routing of x: (weights, expert ids) [T, k]."""
    with torch.inference_mode():
        w, idx = mlp.router(x).topk(mlp.k, -1)
    return w.softmax(-1), idx


def run_moe(mlp, x, idx, w, configs=None, decode=None) -> torch.Tensor:
    """moe_mxfp4 on the layer's packed experts (the tables' tiles and decode unless given)."""
    ex = mlp.experts
    return kmoe.moe_mxfp4(x, idx, w, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                          ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                          configs=configs, decode=decode)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--counts", type=int, nargs="*", default=list(COUNTS))
    ap.add_argument("--decodes", type=int, nargs="*", default=[])
    ap.add_argument("--repeat", action="store_true", help="time every tile twice, in two passes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    R = {"date": datetime.date.today().isoformat(), "env": {"gpu": torch.cuda.get_device_name(),
         "torch": torch.__version__, "triton": __import__("triton").__version__}}
    phase_ceilings(R)
    ceil = R["ceilings"]
    cfg, mlp = one_20b_layer()
    ex = mlp.experts
    d, I, E, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, cfg.num_experts_per_tok
    packed = sum(t.numel() * t.element_size() for t in (ex.gate_up_proj_blocks, ex.gate_up_proj_scales,
                                                          ex.down_proj_blocks, ex.down_proj_scales))
    smin = min(int(ex.gate_up_proj_scales.min()), int(ex.down_proj_scales.min()))
    smax = max(int(ex.gate_up_proj_scales.max()), int(ex.down_proj_scales.max()))
    R["scales"] = [smin, smax]
    g = torch.Generator(device="cuda").manual_seed(2)
    R["counts"] = []
    for T in args.counts:
        x = torch.randn(T, d, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        cls = kmoe._tile_class(T * k / E)
        table = (kmoe.GATE_UP_CONFIGS[cls], kmoe.DOWN_CONFIGS[cls])
        experts_hit = int(torch.unique(idx).numel())
        flops = 2 * T * k * (d * 2 * I + I * d)
        wbytes = packed * experts_hit / E
        bound_ms = 1e3 * max(flops / (ceil["matmul_tflops"] * 1e12), wbytes / ceil["copy_bytes_per_s"])

        def run(configs, decode=None):
            return run_moe(mlp, x, idx, w, configs, decode)

        def timed(name, configs, decode=None, **extra):
            try:
                out = run(configs, decode)
                err = ((out.float() - base.float()).norm() / base.float().norm()).item()
                if not err < 1e-2:
                    return {"variant": name, "error": f"output differs: rel {err:.3g}"}
                return {"variant": name, "ms": gpu_ms(lambda: run(configs, decode), warmup=2, reps=7),
                        "rel_diff": err, **extra}
            except Exception as e:  # e.g. out of shared memory for a large tile: record, go on
                return {"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"}

        rows = []
        with torch.inference_mode():
            base = run(table)
            t_end = time.perf_counter() + 1.0  # bring the clocks up before the first timing
            while time.perf_counter() < t_end:
                run(table)
            torch.cuda.synchronize()
            rows.append({"variant": "table", "ms": gpu_ms(lambda: run(table), warmup=2, reps=7)})
            for decode in args.decodes:
                rows.append(timed(f"table decode={decode}", table, decode, decode_variant=decode))
            for kernel in ("gate_up", "down"):
                for tile in CANDIDATES[cls]:
                    cfgs = (tile, table[1]) if kernel == "gate_up" else (table[0], tile)
                    rows.append(timed(f"{kernel} {tuple(tile)}", cfgs, kernel=kernel, tile=list(tile)))
            if args.repeat:  # a second pass in reverse order; each row keeps the faster of its two timings
                for r in reversed(rows):
                    if "ms" in r and "kernel" in r:
                        t = kmoe.Tile(*r["tile"])
                        cfgs = (t, table[1]) if r["kernel"] == "gate_up" else (table[0], t)
                        again = gpu_ms(lambda: run(cfgs), warmup=2, reps=7)
                        r["ms_runs"] = [r["ms"], again]
                        r["ms"] = min(r["ms"], again)
        ok = [r for r in rows if "ms" in r]
        best = {kernel: min((r for r in ok if r.get("kernel") == kernel), key=lambda r: r["ms"])
                for kernel in ("gate_up", "down")}
        both = (kmoe.Tile(*best["gate_up"]["tile"]), kmoe.Tile(*best["down"]["tile"]))
        with torch.inference_mode():
            rows.append(timed("best of each", both, tiles=[list(t) for t in both]))
        rec = {"T": T, "tile_class": cls, "experts_hit": experts_hit, "bound_ms": bound_ms, "table_ms": rows[0]["ms"],
               "best": best, "best_of_each": rows[-1], "rows": rows}
        R["counts"].append(rec)
        log.info("T=%d class %d bound %.3f ms: table %.3f ms, best of each %s ms (gate_up %s, down %s)", T, cls,
                 bound_ms, rows[0]["ms"], rows[-1].get("ms"), best["gate_up"]["variant"], best["down"]["variant"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
