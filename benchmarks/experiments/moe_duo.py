"""Experiment (issue 6): the Hopper MoE kernels as two consumer warp groups and one loader warp a program.

kernels/moe_hopper.py runs one warp group (64 output features) a program, three programs an SM, each loading its
own copy of the activation tile into shared memory and issuing its own copies. The twenty-eighth session tried
warp groups sharing that copy two ways: three in Gluon's warp_specialize (ptxas serialises every wgmma once two
partitions issue them) and two in one code path with the copies issued by the warp groups themselves between a CTA
barrier and the next wgmma (not serialised, 16-40% slower). This is the layout Hopper GEMM libraries use for mixed-
input matmuls instead: the default partition is two warp groups in one code path (8 warps, 128 output features, each
warp group its own m64 wgmma on the one copy of each activation tile), and a worker partition of one warp issues
every TMA copy, STAGES ahead, refilling a stage once the consumers release it through an `empty` mbarrier. The
consumers issue step k's wgmma before waiting for step k-1's (wait(1): one step in flight behind the one just
issued; the decoded weights in two register sets, as in moe_hopper), so the tensor cores have the next step queued
while a step is released and the next one decoded. Arithmetic, tile rows, schedule and epilogue: moe_hopper's (the
same bits). One program an SM (8 consumer warps of up to ~232 registers).

    python benchmarks/experiments/moe_duo.py --compile          (CPU: compile for sm_90; shared memory, registers,
                                                                 whether ptxas serialises the wgmmas)
    python benchmarks/experiments/moe_duo.py OUT.json [TOKENS]  (GPU: bits against moe_hopper, kernel times)

Written in the twenty-ninth session with its own copy of the kernels and a narrow-tile variant (`DUO_NARROW`: with
narrow tiles in the persistent loop ptxas serialises the wgmmas); the kernels are in the product since the
thirtieth (kernels/moe_hopper_duo.py, without narrow tiles), and this script now runs those. The copy it measured
with, narrow variant included, is this file at commit bc41446.
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

from gptoss_viz.runtime.kernels import moe_hopper as mh  # noqa: E402
from gptoss_viz.runtime.kernels.fused import moe_schedule_fused  # noqa: E402
from gptoss_viz.runtime.kernels.launch import cdiv  # noqa: E402
from gptoss_viz.runtime.kernels.moe import sum_slots  # noqa: E402
from gptoss_viz.runtime.kernels.moe_hopper_duo import _F, _moe_hopper_duo_kernel  # noqa: E402
from moe_trio import grouped  # noqa: E402  (this folder: the script's own)

LOADER_REGS = int(os.environ.get("DUO_LOADER_REGS", "40"))


def moe_mxfp4_duo(x, idx, weight, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                  limit, alpha, tile: mh.HopperTile | None = None, stages: int = 4, one_multiply: bool = True,
                  maxnreg: int | None = None, persistent: int = 0):
    """moe_hopper.moe_mxfp4_hopper (its schedule and tile rows; no clusters) with moe_hopper_duo's kernels;
    `persistent`: at most that many programs (each then takes several tiles), 0 for one program a tile."""
    N, d, E, two_i, I, A, t, bt, bxk, s, xs, act = grouped(x, idx, gate_up_bias, tile, moe_schedule_fused)
    kw = dict(BT=bt, BX=bxk, STAGES=stages, ONE_MULTIPLY=bool(one_multiply), num_warps=8, LREGS=LOADER_REGS)
    if maxnreg:
        kw["maxnreg"] = maxnreg
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as TD

    def launch(rows, blocks, scales, K, N_out, order, route_w, bias, out, gate_up):
        nf = cdiv(N_out, _F)
        items = nf * s.n_tiles
        _moe_hopper_duo_kernel[(min(items, persistent) if persistent else items,)](
            TD.from_tensor(rows, [bt, 64], mh._rows_layout(bt)), TD.from_tensor(rows, [bxk, 64], mh._rows_layout(bxk)),
            TD.from_tensor(blocks.view(torch.int32).view(E * N_out, K // 8), [_F, 8], mh._WORDS),
            TD.from_tensor(scales.view(E * (K // 64), 2 * N_out), [1, 2 * _F], mh._SCALES),
            order, route_w, bias, out, s.tile_expert, s.tile_start, s.tile_end, items, nf, K, N_out, bias.stride(0),
            out.stride(0), float(limit) if gate_up else 0.0, float(alpha) if gate_up else 0.0, GATE_UP=gate_up, **kw)

    launch(xs, gate_up_blocks, gate_up_scales, d, two_i, s.order, s.order, gate_up_bias, act, True)
    y = torch.empty(A, d, device=x.device, dtype=x.dtype)
    launch(act, down_blocks, down_scales, I, d, s.order, weight.reshape(-1).contiguous(), down_bias, y, False)
    return sum_slots(y, N, x.dtype)


def _ptxas_summary(kernel) -> str:
    """ptxas -v's register, spill and advisory lines for the kernel's PTX (Triton's flags)."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(kernel.asm["ptx"])
        run = subprocess.run([get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
                              str(src), "-o", str(src) + ".o"], capture_output=True, text=True)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines()
             if "registers" in ln or "spill" in ln or "C75" in ln]
    return " | ".join(lines)[:1500]


def _compile_only():
    """Compile both launches for sm_90 on CPU tensors (kernel_compat.py's driver); print shared memory, registers
    and whether ptxas serialises the wgmmas."""
    import kernel_compat
    import moe_trio

    global moe_schedule_fused
    moe_schedule_fused = moe_trio.reference_schedule
    args = moe_trio.cpu_compile_args()
    for stages in [int(a) for a in os.environ.get("DUO_STAGES", "3,4,5,6").split(",")]:
        del kernel_compat.COMPILED[:]
        try:
            with torch.inference_mode():
                moe_mxfp4_duo(*args, stages=stages, persistent=132)
            for kk in kernel_compat.COMPILED:
                if "duo" in kk.name:
                    print(f"stages {stages}: shared {kk.metadata.shared}, warps {kk.metadata.num_warps}, "
                          f"serialised {kernel_compat.wgmma_serialised(kk, 90)}; ptxas: {_ptxas_summary(kk)}",
                          flush=True)
                    if os.environ.get("DUO_PTX"):
                        Path(os.environ["DUO_PTX"]).write_text(kk.asm["ptx"])
        except Exception as e:
            print(f"stages {stages}: {type(e).__name__}: {str(e)[:3000]}")
            if os.environ.get("DUO_RAISE"):
                raise


def main() -> None:
    if sys.argv[1:2] == ["--compile"]:
        return _compile_only()
    from moe_hopper import header, hopper_layer
    from moe_trio import compare
    from moe_variants import routed

    out = Path(sys.argv[1])
    counts = [int(a) for a in sys.argv[2:]] or [512, 1024, 2048, 4096]
    cfg, mlp, gu, dn, gus, dns = hopper_layer()
    ex = mlp.experts
    g = torch.Generator(device="cuda").manual_seed(2)
    R = {**header(), "loader_regs": LOADER_REGS, "counts": []}
    stages = [int(a) for a in os.environ.get("DUO_STAGES", "3,4,5").split(",")]
    for T in counts:
        x = torch.randn(T, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
        w, idx = routed(mlp, x)
        tile = mh.hopper_tile(T * 4 / 32)
        if os.environ.get("DUO_TILE"):  # "BT,BX": the duo's tile rows instead of the rule's (the product's stay)
            tile = tile._replace(bt=int(os.environ["DUO_TILE"].split(",")[0]),
                                 bx=int(os.environ["DUO_TILE"].split(",")[1]))
        rec = {"tokens": T, "tile": list(tile), "variants": {}}
        with torch.inference_mode():
            base = lambda: mh.moe_mxfp4_hopper(x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns,  # noqa: E731
                                               ex.down_proj_bias, ex.limit, ex.alpha, one_multiply=True)
            ref = base()
            variants = {"product": base}
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            for st in stages:
                for p in (0, sms):
                    variants[f"duo s{st}" + (" persistent" if p else "")] = (lambda st=st, p=p: moe_mxfp4_duo(
                        x, idx, w, gu, gus, ex.gate_up_proj_bias, dn, dns, ex.down_proj_bias, ex.limit, ex.alpha,
                        tile=tile, stages=st, persistent=p))
            variants["product again"] = base
            rec["variants"] = compare(T, variants, ref, ("moe_hopper", "moe_duo"))
        R["counts"].append(rec)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(R, indent=1))  # (after each count: a run cut short keeps what it measured)


if __name__ == "__main__":
    main()
