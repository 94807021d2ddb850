"""Sweep of the MXFP4 MoE kernel's variants on one full-size gpt-oss layer (issue 6), to choose moe.py's tables.

    python benchmarks/moe_variants.py --out benchmarks/results/moe_variants.json

One 20b MoE layer (32 experts, 120b has 128 of the same shape) with random packed weights built in GPU memory;
per token count, the tile height BM the kernel's rule picks, and per variant: tokens x weights (SWAP: the decoded
weights as the register operand of the tensor-core dot, tokens as the narrow side) or not, and the decode (0: via
fp16/fp32; 2 and 3: PTX on bf16 pairs, with two multiplies or one; the day's first run also had 1, since removed),
over a few (BN, BK, warps, stages) tiles. Each variant's output is checked against the table's before it is timed. Also
prints each count's bound on this GPU: the layer's FLOPs at the measured bf16 matmul rate and its packed weight
bytes at the measured copy bandwidth (the larger of the two).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms, phase_ceilings  # noqa: E402

from gptoss_viz.runtime.kernels import moe as kmoe  # noqa: E402
from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402

log = logging.getLogger("moe_variants")

TILES = {  # (BN, BK, warps, stages) candidates per BM
    16: [(64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3)],
    32: [(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3)],
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3)],
    128: [(64, 64, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (128, 128, 8, 3)],
}
COUNTS = (64, 128, 256, 1024, 2048, 4096)
DECODES = (0, 2, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--counts", type=int, nargs="*", default=list(COUNTS))
    ap.add_argument("--decodes", type=int, nargs="*", default=list(DECODES))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    R = {"date": datetime.date.today().isoformat(), "env": {"gpu": torch.cuda.get_device_name(),
         "torch": torch.__version__, "triton": __import__("triton").__version__}}
    phase_ceilings(R)
    ceil = R["ceilings"]
    cfg = gptoss_config("20b", num_hidden_layers=1, vocab_size=2048)
    model = random_packed_model(cfg, "cuda", seed=1)
    mlp = model.blocks[0].mlp
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
        with torch.inference_mode():
            w, idx = mlp.router(x).topk(k, -1)
        w = w.softmax(-1)
        bm = kmoe._block_m(T * k / E)
        experts_hit = int(torch.unique(idx).numel())
        flops = 2 * T * k * (d * 2 * I + I * d)
        wbytes = packed * experts_hit / E
        bound_ms = 1e3 * max(flops / (ceil["matmul_tflops"] * 1e12), wbytes / ceil["copy_bytes_per_s"])

        def run(configs, decode):
            return kmoe.moe_mxfp4(x, idx, w, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                                  ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                                  block_m=bm, configs=configs, decode=decode)

        with torch.inference_mode():
            base = run(None, 0)
            rows = [{"variant": "table", "ms": gpu_ms(lambda: run(None, 0), warmup=2, reps=7)}]
            for swap in (False, True):
                for decode in args.decodes:
                    if decode == 3 and smax > 128:
                        continue
                    for tile in TILES[bm]:
                        if swap and tile[0] < 64:
                            continue
                        cfgs = ((*tile, swap), (*tile, swap))
                        name = f"swap={int(swap)} decode={decode} tile={list(tile)}"
                        try:
                            out = run(cfgs, decode)
                            err = ((out.float() - base.float()).norm() / base.float().norm()).item()
                            if not err < 1e-2:
                                rows.append({"variant": name, "error": f"output differs: rel {err:.3g}"})
                                continue
                            ms = gpu_ms(lambda: run(cfgs, decode), warmup=2, reps=7)
                            rows.append({"variant": name, "ms": ms, "rel_diff": err, "swap": swap, "decode": decode,
                                         "tile": list(tile)})
                        except Exception as e:  # e.g. out of shared memory for a large tile: record, go on
                            rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        ok = [r for r in rows if "ms" in r]
        best = min(ok, key=lambda r: r["ms"])
        rec = {"T": T, "block_m": bm, "experts_hit": experts_hit, "bound_ms": bound_ms, "table_ms": rows[0]["ms"],
               "best": best, "best_vs_bound": best["ms"] / bound_ms, "rows": rows}
        R["counts"].append(rec)
        log.info("T=%d BM=%d bound %.3f ms: table %.3f ms, best %.3f ms (%s), %.1fx bound", T, bm, bound_ms,
                 rows[0]["ms"], best["ms"], best["variant"], best["ms"] / bound_ms)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
