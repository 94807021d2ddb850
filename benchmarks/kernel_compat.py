"""Do the fast path's kernels compile with the Triton installed here? Every kernel the model and the Trace launch,
specialised as at gpt-oss-20b's shapes, compiled for a GPU architecture on a machine without one (nothing runs:
each launch is turned into Triton's own warm-up, which compiles and stops). For a Triton other than the one the
GPU tests ran on (kernels.launch.VERIFIED_TRITON), this says whether the code still builds there; it cannot say
whether the results are right (moe_hopper.trusted checks that on the GPU, once).

    pip install triton==X   # any machine: the compiler runs on the CPU
    python benchmarks/kernel_compat.py [--arch 90] [--out FILE.json]

Kernels compiled: RMSNorm (with and without the residual), RoPE, routing (and with the MoE schedule's grouping),
the grouped rows' gather, the MoE schedule, the k-sum, attention with sinks (full causal and windowed, with and
without the sink probability), the Trace's pattern statistics and top-5 predictions, moe.py's MXFP4 kernels, and on
sm_90 the Hopper MoE kernels at every tile hopper_tile, gate_up_cluster and duo_tile pick (and both decodes at one).

`--wgmma` (sm_90) also asks ptxas, for each compiled kernel that uses wgmma, whether it serialises them (its
C7510-C7512 advisories: each wgmma waited for before the next, which cost the Hopper MoE kernels 30% and more
when it happened; RESULTS.md, twenty-eighth session), by compiling the kernel's PTX again with Triton's ptxas
flags.
`--control` adds one Hopper MoE tile that ptxas is known to serialise (128+32 at 120 registers), to show that the
check sees it. tests/test_kernel_compat.py runs both.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Target:
    """Just enough of a driver for JITFunction's warm-up to compile for one architecture without a GPU."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_device_interface(self):
        return torch.cuda

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED = []  # every kernel compiled through _compile_only's warm-ups, in order


def _compile_only() -> None:
    """kernel[grid](...) compiles and returns without launching (the compiled kernel, also appended to COMPILED);
    the Launcher goes through it."""
    from gptoss_viz.runtime.kernels.launch import Launcher

    Launcher.enabled = False

    def warm_up(self, grid):
        def compile_it(*a, **k):
            kernel = self.run(*a, grid=grid, warmup=True, **k)
            COMPILED.append(kernel)
            return kernel
        return compile_it

    JITFunction.__getitem__ = warm_up


_SERIALISED = re.compile(r"C751[0-9]|wgmma\.mma_async instructions are serialized")


def wgmma_serialised(kernel, arch: int) -> bool | None:
    """Whether ptxas serialises the compiled kernel's wgmmas (None: it has none), from the kernel's PTX compiled
    again with the flags Triton gives ptxas (-lineinfo, -v, --regAllocOptLevel=2)."""
    ptx = kernel.asm.get("ptx")
    if ptx is None or "wgmma.mma_async" not in ptx:
        return None
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(src) + ".o"],
                             capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed on {kernel.name}: {run.stderr[-500:]}")
    return bool(_SERIALISED.search(run.stdout + run.stderr))


def cases(arch: int, control: bool = False) -> dict:
    """name -> a function that makes the launches of one kernel (CPU tensors at 20b shapes)."""
    from gptoss_viz.runtime.kernels import attention, fused, moe

    bf = torch.bfloat16
    T, d, H, K, D, E, k = 64, 2880, 64, 8, 64, 32, 4
    x = torch.randn(T, d).to(bf)
    q, kk, v = torch.randn(T, H, D).to(bf), torch.randn(T, K, D).to(bf), torch.randn(T, K, D).to(bf)
    cos, sin = torch.randn(T, D // 2), torch.randn(T, D // 2)
    sinks = torch.randn(H).to(bf)
    idx = torch.rand(T, E).topk(k, -1).indices
    w = torch.rand(T, k).to(bf)
    blocks = lambda n, kd: torch.zeros(E, n, kd // 32, 16, dtype=torch.uint8)  # noqa: E731
    scales = lambda n, kd: torch.full((E, n, kd // 32), 120, dtype=torch.uint8)  # noqa: E731
    moe_args = (x, idx, w, blocks(2 * d, d), scales(2 * d, d), torch.zeros(E, 2 * d).to(bf), blocks(d, d),
                scales(d, d), torch.zeros(E, d).to(bf), 7.0, 1.702)
    c = {
        "rms_norm": lambda: fused.rms_norm_fused(x, torch.ones(d), 1e-5),
        "rms_norm + residual": lambda: fused.rms_norm_fused(x, torch.ones(d), 1e-5, x),
        "embedding + id range + rms_norm": lambda: fused.embed_fused(
            torch.randint(0, 2048, (T,)), torch.randn(2048, d).to(bf), (torch.ones(d), 1e-5)),
        "rope (q and k)": lambda: fused.rope_fused(q, cos, sin, kk),
        "route": lambda: fused.route_fused(torch.randn(T, E).to(bf), k),
        "router + route": lambda: fused.router_route_fused(x, torch.randn(E, d).to(bf), torch.zeros(E).to(bf), k),
        "router + route + grouping": lambda: fused.router_route_fused(x, torch.randn(E, d).to(bf),
                                                                      torch.zeros(E).to(bf), k, block_m=160),
        "grouped rows": lambda: fused.group_rows_fused(x, idx, fused.Grouping(
            torch.zeros(T * k, dtype=torch.int32), torch.zeros(64, dtype=torch.int32), *[torch.zeros(
                40, dtype=torch.int32)] * 3, 40, 160)),
        "k-sum (bf16 slots) + residual": lambda: moe.sum_slots(torch.zeros(T * k, d).to(bf), T, bf, x),
        "moe schedule": lambda: fused.moe_schedule_fused(idx, E, 64),
        "k-sum + residual": lambda: moe.sum_slots(torch.zeros(T * k, d), T, bf, x),
        "top-5 predictions": lambda: fused.top_predictions_fused(torch.randn(4, 201088).to(bf), 5),
        "attention, full causal": lambda: attention.attention_with_sinks_fused(q, kk, v, sinks, None),
        "attention, window + sink probability": lambda: attention.attention_with_sinks_fused(
            q, kk, v, sinks, 16, want_sink=True),
        "pattern statistics, full causal": lambda: attention.pattern_stats_fused(q, kk, sinks, None, [0, 1, 8, 64]),
        "pattern statistics, window": lambda: attention.pattern_stats_fused(q, kk, sinks, 16, [0, 1, 8, 64]),
    }
    for cls in sorted(moe.GATE_UP_CONFIGS):  # moe.py's tables, decode 0 (what runs off sm_90) and 2 on sm_90
        configs = (moe.GATE_UP_CONFIGS[cls], moe.DOWN_CONFIGS[cls])
        c[f"moe.py MXFP4 kernels, {cls}-row class"] = (
            lambda configs=configs: moe.moe_mxfp4(*moe_args, configs=configs, decode=2 if arch >= 90 else 0))
    if arch == 90:
        from gptoss_viz.runtime.kernels import moe_hopper
        from gptoss_viz.runtime.mxfp4 import to_hopper_order, to_hopper_scales

        from gptoss_viz.runtime.kernels.schedule import moe_schedule

        moe_hopper.supported = lambda *a: True  # (it asks the GPU for its capability)
        if moe_hopper.CLUSTERS:
            from gptoss_viz.runtime.kernels import moe_hopper_duo

            moe_hopper_duo.programs = lambda device: 132  # (an H100's SMs; it asks the GPU)

        def schedule(idx, n_experts, block_m):  # the torch reference: the kernel's never runs here, its rows would
            s = moe_schedule(idx, n_experts, block_m)  # be garbage for the row gather (int32, as the kernel's)
            return s.__class__(**{**s.__dict__, "order": s.order.int(), "token": s.token.int()})

        moe_hopper.moe_schedule_fused = schedule
        hop = list(moe_args)
        for i in (3, 4, 6, 7):
            hop[i] = (to_hopper_order if i in (3, 6) else to_hopper_scales)(hop[i])
        picked = {moe_hopper.hopper_tile(m, e) for m in (1, 20, 80, 200, 600) for e in (32, 128)}
        tiles = sorted(picked | {moe_hopper.gate_up_cluster(t, moe_hopper.CLUSTERS) for t in picked}
                       | {moe_hopper.duo_tile(t, moe_hopper.CLUSTERS) for t in picked})
        for tile in tiles:
            for one in ((True, False) if tile.bt == 128 and tile.bx == 32 and tile.cluster == 1 else (True,)):
                name = (f"Hopper MoE kernels, {tile.bt}+{tile.bx} x{tile.halves}" + (" c2" if tile.cluster == 2 else "")
                        + (" duo" if tile.duo else "") + ("" if one else ", two multiplies"))
                c[name] = lambda tile=tile, one=one: moe_hopper.moe_mxfp4_hopper(*hop, tile=tile, one_multiply=one)
        if control:
            bad = moe_hopper.HopperTile(128, 32, 2, 120)
            c[CONTROL] = lambda: moe_hopper.moe_mxfp4_hopper(*hop, tile=bad, one_multiply=True)
    return c


CONTROL = "Hopper MoE kernels, 128+32 at 120 registers (control: ptxas serialises its wgmmas)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="compute capability to compile for, e.g. 90 or 80")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--wgmma", action="store_true", help="also report kernels whose wgmmas ptxas serialises (sm_90)")
    ap.add_argument("--control", action="store_true", help="add a Hopper MoE tile ptxas is known to serialise")
    args = ap.parse_args()
    driver.set_active(_Target(args.arch))
    _compile_only()
    R = {"triton": triton.__version__, "torch": torch.__version__, "arch": args.arch, "kernels": {}}
    if args.wgmma:
        R["wgmma_serialised"] = {}  # case -> whether ptxas serialised the wgmmas of any kernel it compiled
    for name, fn in cases(args.arch, args.control).items():
        del COMPILED[:]
        try:
            with torch.inference_mode():
                fn()
            R["kernels"][name] = "ok"
            if args.wgmma:
                flags = [f for f in (wgmma_serialised(k, args.arch) for k in COMPILED) if f is not None]
                if flags:
                    R["wgmma_serialised"][name] = any(flags)
        except Exception as e:  # report and go on: the point is the list
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            R["kernels"][name] = f"FAILED: {last[:300]}"
        serial = R.get("wgmma_serialised", {}).get(name)
        print(f"{name}: {R['kernels'][name]}" + ("" if serial is None else f", wgmma serialised: {serial}"),
              flush=True)
    bad = [n for n, r in R["kernels"].items() if r != "ok"]
    print(f"Triton {triton.__version__}, sm_{args.arch}: {len(R['kernels']) - len(bad)} of {len(R['kernels'])} "
          "kernels compile" + (f"; failed: {', '.join(bad)}" if bad else ""))
    if args.wgmma:
        serial = [n for n, f in R["wgmma_serialised"].items() if f]
        print(f"wgmma: {len(R['wgmma_serialised'])} cases use it, serialised in "
              + (", ".join(serial) if serial else "none"))
    if args.out:
        args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
