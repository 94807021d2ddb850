"""How much of a Hopper MoE program's time is fixed (pipeline fill, epilogue, start-up) rather than per K step:
the same routing at the 20b layer's shapes and with K doubled (d = 5760 for gate_up, I = 5760 for down), the
kernels' GPU time from torch.profiler. fixed = 2 t(K) - t(2K), spread over the grid. Development probe (issue 6).

    python fixed_cost_probe.py OUT.json [TOKENS ...]
"""

import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptoss_viz.runtime.kernels.moe_hopper import hopper_tile, moe_mxfp4_hopper  # noqa: E402


def layer(d, I, E=32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    u8 = lambda *s: torch.randint(0, 256, s, device="cuda", dtype=torch.uint8, generator=g)  # noqa: E731
    sc = lambda *s: torch.randint(117, 122, s, device="cuda", dtype=torch.uint8, generator=g)  # noqa: E731
    bf = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    return (u8(E, 2 * I, d // 32, 16), sc(E, 2 * I, d // 32), bf(E, 2 * I), u8(E, d, I // 32, 16), sc(E, d, I // 32),
            bf(E, d))


def kernel_ms(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    ev = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and "_moe_hopper_kernel" in e.name),
                key=lambda e: e.time_range.start)
    gate = [e.device_time for e in ev[0::2]]
    down = [e.device_time for e in ev[1::2]]
    med = lambda v: sorted(v)[len(v) // 2] / 1e3  # noqa: E731
    return med(gate), med(down)


def main():
    out = Path(sys.argv[1])
    counts = [int(t) for t in sys.argv[2:]] or [1024, 2048]
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    for T in counts:
        g = torch.Generator(device="cuda").manual_seed(1)
        idx = torch.rand(T, 32, device="cuda", generator=g).topk(4, dim=-1).indices
        w = torch.rand(T, 4, device="cuda", generator=g).softmax(-1).to(torch.bfloat16)
        res = {}
        for d, I in ((2880, 2880), (5760, 2880), (2880, 5760)):
            x = torch.randn(T, d, device="cuda", generator=g).to(torch.bfloat16)
            L = layer(d, I)
            fn = lambda: moe_mxfp4_hopper(x, idx, w, *L[:3], *L[3:], 7.0, 1.702, one_multiply=True,  # noqa: E731
                                          descriptors={})
            with torch.inference_mode():
                res[f"{d}x{I}"] = kernel_ms(fn)
        g1, d1 = res["2880x2880"]
        g2, _ = res["5760x2880"]
        _, d2 = res["2880x5760"]
        row = {"T": T, "tile": list(hopper_tile(T * 4 / 32, 32)), "ms": res,
               "gate_up_fixed_ms": 2 * g1 - g2, "gate_up_fixed_share": (2 * g1 - g2) / g1,
               "down_fixed_ms": 2 * d1 - d2, "down_fixed_share": (2 * d1 - d2) / d1}
        print(json.dumps(row), flush=True)
        R["rows"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
