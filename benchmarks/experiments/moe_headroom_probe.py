"""Where the Hopper MoE kernels' time over the dense GEMM of the same FLOPs goes at 1024 tokens (issue 6,
thirty-first session): one random 20b layer, the product's tiles for 1024 tokens (128+32, gate_up in clusters of
two) forced for every routing, three routings of the same T random rows (1024 by default), and the dense GEMMs:

- "own": the layer's router's choice (~128 +- 11 rows an expert: tiles partly filled, overflow wgmmas);
- "even": token t to experts 4t .. 4t + 3 (mod 32): exactly 128 rows an expert, one full 128-row tile each, no
  overflow; every expert's weights still stream from memory once;
- "four": every token to experts 0-3: 1024 rows each, cut into full 160-row tiles (and one of 64), so each weight
  tile is read by 7 programs, mostly from L2 (the four experts' packed weights are ~53 MB);
- the dense cuBLAS GEMMs of the same shapes (moe_peer.py's bound).

    python benchmarks/experiments/moe_headroom_probe.py OUT.json [TOKENS]

Kernel times by torch.profiler (mean of 5 calls: launches_ms of benchmarks/moe_hopper.py, not of the kernel module
that `moe_hopper` names here).
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from moe_hopper import header, hopper_layer, launches_ms  # noqa: E402
from moe_peer import kernel_ms  # noqa: E402
from moe_variants import routed  # noqa: E402

from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    R = {**header(), "tokens": T, "rows": []}
    cfg, mlp, gu, dn, gus, dns = hopper_layer("20b")
    ex = mlp.experts
    d, I, E, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, cfg.num_experts_per_tok
    om = max(int(gus.max()), int(dns.max())) <= 128
    tile = moe_hopper.hopper_tile(1024 * k / E, E)  # the product's choice at 1024 tokens
    moe_hopper.hopper_tile = lambda m, n=E: tile  # (moe_mxfp4_hopper passes the module's rule to its plan)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(T, d, device="cuda", generator=g).to(torch.bfloat16)
    w_own, idx_own = routed(mlp, x)
    t = torch.arange(T, device="cuda")[:, None]
    j = torch.arange(k, device="cuda")[None, :]
    quarter = torch.full((T, k), 1 / k, device="cuda", dtype=torch.bfloat16)
    routings = {"own": (w_own, idx_own), "even": (quarter, (k * t + j) % E),
                "four": (quarter, j.expand(T, k).contiguous())}
    A = T * k
    flops = 2 * A * d * 2 * I + 2 * A * I * d
    with torch.inference_mode():
        for name, (w, idx) in routings.items():
            def ours(w=w, idx=idx):
                return moe_hopper.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,
                                                   ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=om)
            moe = [ms for n, ms in launches_ms(ours) if "moe_hopper" in n]
            counts = torch.bincount(idx.reshape(-1), minlength=E)
            R["rows"].append({"routing": name, "gate_up_ms": moe[0], "down_ms": moe[1],
                              "tflops": flops / (moe[0] + moe[1]) / 1e9,
                              "rows_an_expert": [int(counts.min()), int(counts.max())]})
        xs = x.repeat_interleave(k, 0)
        w1 = torch.randn(2 * I, d, device="cuda", generator=g).to(torch.bfloat16)
        w2 = torch.randn(d, I, device="cuda", generator=g).to(torch.bfloat16)
        a = torch.randn(A, I, device="cuda", generator=g).to(torch.bfloat16)
        # each GEMM timed by itself, all its launches summed (cuBLAS may add a small one)
        dense = [kernel_ms(lambda: torch.mm(xs, w1.t())), kernel_ms(lambda: torch.mm(a, w2.t()))]
        R["rows"].append({"routing": "dense cuBLAS, same shapes", "gate_up_ms": dense[0], "down_ms": dense[1],
                          "tflops": flops / sum(dense) / 1e9})
    for r in R["rows"]:
        print(f"{r['routing']:>28}: gate_up {r['gate_up_ms']:.4f} down {r['down_ms']:.4f} ms, "
              f"{r['tflops']:.0f} TFLOP/s, rows an expert {r.get('rows_an_expert', '')}", flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
