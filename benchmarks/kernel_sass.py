"""Where the MoE kernels' instructions go, without a GPU: compile them for sm_90 with Triton's bundled ptxas and
count the SASS instructions of the main loop (one K step of one thread), by opcode.

    pip install triton   # any machine: the compiler runs on the CPU
    python benchmarks/kernel_sass.py --out benchmarks/results/kernel_sass.json

The kernels are specialised the way the JIT specialises them for gpt-oss-20b at run time (16-byte aligned
pointers; integer arguments divisible by 16 marked so, except the scale row stride d/32 = 90): without those
hints the loads do not vectorise and the counts mean nothing. Static counts are not timings: they show how many
issue slots the decode, the address arithmetic and the loads take next to the tensor-core instructions (HGMMA).
The local Triton may differ from the GPU machine's (this matters for the exact counts, not the proportions).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = {"blk_ptr": "*u8", "scl_ptr": "*u8", "bias_ptr": "*bf16", "tile_expert_ptr": "*i32",
          "tile_start_ptr": "*i32", "tile_end_ptr": "*i32", "K": "i32", "N": "i32"}
STRIDES = ["stride_be", "stride_bn", "stride_se", "stride_sn", "stride_biase"]
NOT_DIVISIBLE_BY_16 = {"stride_sn"}  # d/32 = I/32 = 90



def cases() -> list:
    """(kernel, DECODE, Tile): the tables' tiles at 1024+, 512 and 128 tokens (20b), and decode variants."""
    from gptoss_viz.runtime.kernels.moe import DOWN_CONFIGS, GATE_UP_CONFIGS, Tile

    return [("gate_up", 0, GATE_UP_CONFIGS[256]), ("gate_up", 2, GATE_UP_CONFIGS[256]),
            ("gate_up", 3, GATE_UP_CONFIGS[256]), ("down", 2, DOWN_CONFIGS[256]),
            ("gate_up", 2, Tile(128, 128, 64, 8, 4)),  # the 1024-token table before the one-warp-group tiles
            ("gate_up", 2, GATE_UP_CONFIGS[128]), ("down", 2, DOWN_CONFIGS[128]),
            ("gate_up", 2, GATE_UP_CONFIGS[32]), ("gate_up", 2, GATE_UP_CONFIGS[32]._replace(swap=False))]


def signature(kernel: str) -> dict:
    if kernel == "gate_up":
        sig = {"x_ptr": "*bf16", "order_ptr": "*i32", "blk_ptr": "*u8", "scl_ptr": "*u8", "bias_ptr": "*bf16",
               "out_ptr": "*bf16", "tile_expert_ptr": "*i32", "tile_start_ptr": "*i32", "tile_end_ptr": "*i32",
               "K": "i32", "N": "i32", "stride_xm": "i32", **{s: "i32" for s in STRIDES}, "stride_om": "i32",
               "limit": "fp32", "alpha": "fp32", "TOP_K": "constexpr"}
    else:
        sig = {"a_ptr": "*bf16", "order_ptr": "*i32", "route_w_ptr": "*bf16", "blk_ptr": "*u8", "scl_ptr": "*u8",
               "bias_ptr": "*bf16", "y_ptr": "*fp32", "tile_expert_ptr": "*i32", "tile_start_ptr": "*i32",
               "tile_end_ptr": "*i32", "K": "i32", "N": "i32", "stride_am": "i32", **{s: "i32" for s in STRIDES},
               "stride_ym": "i32"}
    return {**sig, "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "NSUB": "constexpr", "SWAP": "constexpr",
            "DECODE": "constexpr"}


def loop_opcodes(kernel: str, decode: int, tile) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gptoss_viz.runtime.kernels import moe

    bm, bn, bk, warps, stages, swap, nsub = tile
    sig = signature(kernel)
    consts = {"BM": bm, "BN": bn, "BK": bk, "NSUB": nsub, "SWAP": swap, "DECODE": decode}
    if kernel == "gate_up":
        consts["TOP_K"] = 4
    attrs = {(i,): [["tt.divisibility", 16]] for i, (n, t) in enumerate(sig.items())
             if t not in ("constexpr", "fp32") and n not in NOT_DIVISIBLE_BY_16}
    fn = moe._gate_up_swiglu_kernel if kernel == "gate_up" else moe._down_kernel
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    try:
        sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    regs = int(m.group(1)) if (m := re.search(r"REG:(\d+)", usage)) else None
    instr = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    back = [(int(m.group(1), 16), a) for a, t in instr if (m := re.search(r"BRA\s.*?0x([0-9a-f]+)", t))
            and int(m.group(1), 16) < a]  # backward branches: loops
    lo, hi = max(back, key=lambda r: r[1] - r[0])  # the longest loop: the K loop (of NSUB sub-tiles)
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for a, t in instr if lo <= a <= hi)
    spills = sum(n for op, n in ops.items() if op.startswith(("STL", "LDL")))
    short = collections.Counter()
    for op, n in ops.items():
        short[op.split(".")[0]] += n
    return {"kernel": kernel, "decode": decode, "tile": tile._asdict(), "registers": regs,
            "shared_bytes": k.metadata.shared, "loop_instructions": sum(ops.values()),
            "warp_instructions_per_k_step": sum(ops.values()) * warps, "spills_in_loop": spills,
            "by_opcode": dict(short.most_common()), "memory_ops": {o: n for o, n in ops.items()
                                                                    if o.startswith(("LDG", "LDS", "STS", "UTMA"))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import triton

    rows = []
    for kernel, decode, tile in cases():
        r = loop_opcodes(kernel, decode, tile)
        rows.append(r)
        top = ", ".join(f"{o} {n}" for o, n in list(r["by_opcode"].items())[:8])
        print(f"{kernel:7s} decode {decode} {tuple(tile)}: {r['registers']} registers, {r['shared_bytes']} B shared; "
              f"{r['loop_instructions']} instructions a thread per K step (spills {r['spills_in_loop']}): {top}")
    if args.out:
        args.out.write_text(json.dumps({"triton": triton.__version__, "target": "sm_90", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
