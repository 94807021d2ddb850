"""The Hopper MoE kernels (kernels/moe_hopper.py: MXFP4 weights decoded inside the kernel) against peers on the same
gpt-oss-20b layer, same GPU, same run (issue 6):

- PyTorch's grouped GEMM, `torch._grouped_mm` (CUTLASS's sm90 grouped kernel), on the same weights dequantized to
  bf16 once beforehand (4x the bytes to read, no decode) and the same expert-grouped rows;
- cuBLAS's dense GEMM of the same shapes summed over experts (every row as if routed to one expert: the same FLOPs
  with no grouping), the tensor cores' practical rate for these matrices.

    python benchmarks/moe_peer.py --out benchmarks/results/moe_peer_h100.json

Per token count: the layer's own routing of random rows; each kernel's GPU time (torch.profiler, mean of 5 calls);
gate_up (hidden -> 2 x intermediate) and down (intermediate -> hidden) separately, since ours fuses the bias,
SwiGLU and routing weights into them and the peer does those in separate elementwise launches (timed apart, as
"peer_elementwise_ms"; plain PyTorch, untuned). Ours is checked against the peer's whole layer (relative Frobenius
difference): both multiply the same bf16 values with fp32 accumulation, but the peer rounds each GEMM's output to
bf16 before its bias and SwiGLU, where ours adds them to the fp32 accumulator, so they differ by bf16 rounding
(5.9e-3 on an H100; moe_hopper.SELF_TEST_TOLERANCE allows 2e-2 against fp32 maths). The useful FLOPs are
2 A d 2I + 2 A I d for A = T k assignments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from moe_hopper import header, hopper_layer, launches_ms  # noqa: E402
from moe_variants import routed  # noqa: E402

from gptoss_viz.runtime.gptoss import swiglu_clamped  # noqa: E402
from gptoss_viz.runtime.kernels import moe_hopper  # noqa: E402

COUNTS = (128, 512, 1024, 2048, 4096)


def kernel_ms(fn) -> float:
    """Summed mean GPU ms of all the launches of one fn() call."""
    return sum(ms for _, ms in launches_ms(fn))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--counts", type=int, nargs="*", default=list(COUNTS))
    args = ap.parse_args()
    R = {**header(), "peer": "torch._grouped_mm (bf16) and torch.mm (dense, same FLOPs)", "counts": []}
    cfg, mlp, gu, dn, gus, dns = hopper_layer("20b")
    ex = mlp.experts
    d, I, E, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, cfg.num_experts_per_tok
    with torch.inference_mode():
        w1, w2 = zip(*((a, b) for _, a, b in ex.dequantized(list(range(E)), torch.bfloat16)))
        w1 = torch.stack(w1)  # [E, 2I, d], rows interleaving gate and up as the checkpoint does
        w2 = torch.stack(w2)  # [E, d, I]
    om = max(int(gus.max()), int(dns.max())) <= 128  # what the model decodes with (Experts.note_scales)
    b1, b2 = ex.gate_up_proj_bias.to(torch.bfloat16), ex.down_proj_bias.to(torch.bfloat16)
    w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)  # [E, d, 2I], [E, I, d]: column-major, as CUTLASS takes B
    g = torch.Generator(device="cuda").manual_seed(2)
    for T in args.counts:
        x = torch.randn(T, d, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        A = T * k
        flops_gate_up, flops_down = 2 * A * d * 2 * I, 2 * A * I * d
        with torch.inference_mode():
            flat = idx.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=E)
            offs = counts.cumsum(0).to(torch.int32)
            expert_of_row = flat[order]
            xs = x.index_select(0, order // k)  # [A, d] grouped by expert
            rw = w.reshape(-1)[order].to(torch.float32)

            def ours():
                return moe_hopper.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,
                                                   ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=om)

            def peer_gate_up():
                return torch._grouped_mm(xs, w1t, offs=offs)

            h = peer_gate_up()
            a = swiglu_clamped(h + b1[expert_of_row], ex.limit, ex.alpha)

            def peer_down():
                return torch._grouped_mm(a, w2t, offs=offs)

            def peer_elementwise():
                act = swiglu_clamped(h + b1[expert_of_row], ex.limit, ex.alpha)
                y = (peer_down_out + b2[expert_of_row]).float() * rw[:, None]
                return act, torch.zeros(T, d, device="cuda").index_add_(0, order // k, y)

            peer_down_out = peer_down()
            _, peer_out = peer_elementwise()
            got = ours()
            rel = ((got.float() - peer_out).norm() / peer_out.norm()).item()
            dense_a, dense_b = xs, w1[0].t()  # the same [A, d] x [d, 2I] and [A, I] x [I, d] shapes, one matrix

            def dense_gate_up():
                return torch.mm(dense_a, dense_b)

            def dense_down():
                return torch.mm(a, w2[0].t())

            ours_launches = launches_ms(ours)
            moe = [ms for name, ms in ours_launches if "moe_hopper" in name]
            row = {"tokens": T, "assignments": A, "rel_diff_to_peer": rel,
                   "ours_launches": ours_launches,
                   "ours_gate_up_ms": moe[0], "ours_down_ms": moe[1],
                   "peer_gate_up_ms": kernel_ms(peer_gate_up),
                   "peer_down_ms": kernel_ms(peer_down),
                   "peer_elementwise_ms": kernel_ms(peer_elementwise),
                   "dense_gate_up_ms": kernel_ms(dense_gate_up),
                   "dense_down_ms": kernel_ms(dense_down)}
        for part, fl in (("gate_up", flops_gate_up), ("down", flops_down)):
            for who in ("ours", "peer", "dense"):
                row[f"{who}_{part}_tflops"] = fl / row[f"{who}_{part}_ms"] / 1e9
        ours_ms = row["ours_gate_up_ms"] + row["ours_down_ms"]
        row["ours_over_peer_gemms"] = ours_ms / (row["peer_gate_up_ms"] + row["peer_down_ms"])
        row["ours_over_dense"] = ours_ms / (row["dense_gate_up_ms"] + row["dense_down_ms"])
        R["counts"].append(row)
        print(f"T={T}: ours gate_up/down {row['ours_gate_up_ms']:.4f}/{row['ours_down_ms']:.4f} ms "
              f"({row['ours_gate_up_tflops']:.0f}/{row['ours_down_tflops']:.0f} TFLOP/s); peer grouped bf16 "
              f"{row['peer_gate_up_ms']:.4f}/{row['peer_down_ms']:.4f} (+{row['peer_elementwise_ms']:.4f} "
              f"elementwise); dense {row['dense_gate_up_ms']:.4f}/{row['dense_down_ms']:.4f}; ours/peer "
              f"{row['ours_over_peer_gemms']:.2f}x, ours/dense {row['ours_over_dense']:.2f}x; rel diff {rel:.2e}",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
