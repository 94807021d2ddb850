"""The Hopper MoE kernel (kernels/moe_hopper.py) compiled for sm_90 on a machine without a GPU, and the SASS of
its K loops: instructions a loop iteration (two K steps) by opcode, with the CTA barriers, mbarrier operations and
wgmmas counted. Triton's JIT needs an active driver to pick the target, so a stand-in one names sm_90; the
arguments are CPU tensors shaped as gpt-oss-20b's at run time (TMA descriptors over them; nothing is launched).

    python benchmarks/experiments/hopper_sass.py BT BX STAGES [down] [rMAXNREG] [h2] [om] [u] [ws] [c2] [--dump F]

(`h2`: 128 output features a program, HopperTile.halves = 2 (eleventh session); `ws`: the warp-specialised
variant of experiments/moe_hopper_ws_loader.patch, once applied; `om`: the one-multiply decode, twelfth session;
`u`: the K loop unrolled 2 * STAGES steps, HopperTile.unroll, fourteenth session; `c2`: a cluster of two CTAs
sharing each activation tile by TMA multicast, HopperTile.cluster, twenty-fourth session, Triton 3.7 on, with
experiments/moe_hopper_multicast.patch applied.)

Tenth session (issue 6): a K step of the 128+32 tile is ~270 instructions a warp with 5 CTA barriers
(RESULTS.md). The counts depend on the Triton version (the GPU machine's is 3.6).
"""

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.runtime import driver

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_compat import _Target  # noqa: E402  (a stand-in driver that names the architecture)


def compile_kernel(bt: int, bx: int, stages: int, gate_up: bool = True, maxnreg: int = 0, tokens: int = 1024,
                   ws: bool = False, halves: int = 1, one_multiply: bool = False, unroll: bool = False,
                   cluster: int = 1):
    driver.set_active(_Target(90))
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from gptoss_viz.runtime.kernels import moe_hopper as mh

    E, d, I, k = 32, 2880, 2880, 4
    A = tokens * k
    K, N = (d, 2 * I) if gate_up else (I, d)
    rows = torch.empty(A, K, dtype=torch.bfloat16)
    words = torch.empty(E * N, K // 8, dtype=torch.int32)
    scales = torch.empty(E * (K // 64), 2 * N, dtype=torch.uint8)
    bias = torch.empty(E, N, dtype=torch.bfloat16)
    out = torch.empty(A, I if gate_up else d, dtype=torch.bfloat16 if gate_up else torch.float32)
    i32 = torch.empty(A, dtype=torch.int32)
    bxk = max(bx, 16)
    extra = {"maxnreg": maxnreg} if maxnreg else {}
    if "WS" in mh._moe_hopper_kernel.arg_names:  # with experiments/moe_hopper_ws_loader.patch applied
        extra["WS"] = ws
    elif ws:
        raise SystemExit("ws: apply benchmarks/experiments/moe_hopper_ws_loader.patch first")
    if "HALVES" in mh._moe_hopper_kernel.arg_names:
        extra["HALVES"] = halves
    if "ONE_MULTIPLY" in mh._moe_hopper_kernel.arg_names:
        extra["ONE_MULTIPLY"] = one_multiply
    if "UNROLL" in mh._moe_hopper_kernel.arg_names:
        extra["UNROLL"] = unroll
    bop = mh.BO * halves * cluster
    rows_layout = (lambda r: mh._rows_layout(r, cluster)) if cluster > 1 else mh._rows_layout  # noqa: E731
    if cluster > 1:  # HopperTile.cluster (twenty-fourth session; Triton 3.7 on)
        if "CL" not in mh._moe_hopper_kernel.arg_names:
            raise SystemExit("c2: apply benchmarks/experiments/moe_hopper_multicast.patch first")
        extra.update(CL=cluster, num_ctas=cluster)
    return mh._moe_hopper_kernel.warmup(
        TensorDescriptor.from_tensor(rows, [bt, 64], rows_layout(bt)),
        TensorDescriptor.from_tensor(rows, [bxk, 64], rows_layout(bxk)),
        TensorDescriptor.from_tensor(words, [bop, 8], mh._WORDS_CL if cluster > 1 else mh._WORDS),
        TensorDescriptor.from_tensor(scales, [1, 2 * bop], mh._SCALES_CL if cluster > 1 else mh._SCALES),
        i32, torch.empty(A, dtype=torch.bfloat16), bias, out, i32, i32, i32, K, N, bias.stride(0), out.stride(0),
        7.0, 1.702, GATE_UP=gate_up, TOP_K=k, BT=bt, BX=bxk, BO=bop // halves, STAGES=stages,
        NARROW=bt >= 64 and cluster == 1, num_warps=4, grid=(1,), **extra)


def sass_of(kernel) -> tuple[str, str]:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    return sass, usage


def k_loops(sass: str) -> list[dict]:
    """Every innermost loop (a backward branch) of fewer than 2400 instructions that issues a wgmma: the K loops."""
    instr = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for a, t in instr:
        m = re.search(r"BRA\s.*?0x([0-9a-f]+)", t)
        if m and int(m.group(1), 16) < a:
            lo = int(m.group(1), 16)
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0]
                                      for b, x in instr if lo <= b <= a)
            n = sum(ops.values())
            # (a range reaching the mbarrier-wait stubs at the code's end, many SYNCS, is no K loop)
            if n < 2400 and ops.get("HGMMA") and ops.get("SYNCS", 0) <= ops["HGMMA"]:
                loops.append({"at": hex(lo), "end": a, "instructions": n, "wgmma": ops["HGMMA"], "bar": ops.get("BAR", 0),
                              "mbarrier": ops.get("SYNCS", 0), "membar": ops.get("MEMBAR", 0),
                              "top": dict(ops.most_common(10))})
    # a backward branch from a stub at the end of the code spans whole loops: keep the innermost ranges
    inner = [p for p in loops if not any(q is not p and int(p["at"], 16) <= int(q["at"], 16) and q["end"] <= p["end"]
                                         for q in loops)]
    return [{k: v for k, v in p.items() if k != "end"} for p in inner]


def main() -> None:
    args = sys.argv[1:]
    dump = args[args.index("--dump") + 1] if "--dump" in args else None
    args = [a for a in args if a != "--dump" and a != dump]
    bt, bx, stages = (int(a) for a in args[:3])
    maxnreg = next((int(a[1:]) for a in args[3:] if a.startswith("r")), 0)
    kernel = compile_kernel(bt, bx, stages, gate_up="down" not in args, maxnreg=maxnreg, ws="ws" in args,
                            halves=2 if "h2" in args else 1, one_multiply="om" in args, unroll="u" in args,
                            cluster=2 if "c2" in args else 1)
    sass, usage = sass_of(kernel)
    print(f"shared {kernel.metadata.shared} B;", re.search(r"REG:\d+.*?LOCAL:\d+", usage).group(0))
    for loop in k_loops(sass):
        print(loop)
    if dump:
        Path(dump).write_text(sass)


if __name__ == "__main__":
    main()
