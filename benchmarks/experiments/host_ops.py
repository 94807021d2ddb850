"""Host time of each launch of one 20b layer at 1024 tokens (perf_counter over 50 calls, GPU queue not full),
for the launch-cost work of issue 6. Development probe. `--launch`: one Triton launch through the JIT against
the compiled kernel's launcher; `--moe`: the pieces of one Hopper MoE call (twelfth session; thirteenth: through
the JIT or kernels/launch.py's Launcher, weight descriptors kept or not), with `--profile` a cProfile of its
gate_up launch."""

import dataclasses
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def host_us(fn, n=50):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


def main() -> None:
    from gptoss_viz.runtime.gptoss import route
    from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused
    from gptoss_viz.runtime.kernels.fused import moe_schedule_fused, rms_norm_fused, rope_fused
    from gptoss_viz.runtime.kernels.moe_hopper import moe_mxfp4_hopper

    cfg = gptoss_config("20b")
    cfg = dataclasses.replace(cfg, num_hidden_layers=2, layer_types=cfg.layer_types[:2])
    model = random_packed_model(cfg, "cuda")
    model.prepare_kernels()
    T = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1024
    b = model.blocks[0]
    a, m, ex = b.attn, b.mlp, b.mlp.experts
    x = torch.randn(T, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    cos, sin = model.rope(T, x.device)
    q = a.q_proj(x).view(T, -1, 64)
    k = a.k_proj(x).view(T, -1, 64)
    v = a.v_proj(x).view(T, -1, 64)
    o = torch.randn(T, 4096, device="cuda", dtype=torch.bfloat16)
    logits = m.router(x)
    idx, w = route(logits, 4)
    wq = a.q_proj.weight
    rows = {
        "linear q (bias)": lambda: a.q_proj(x),
        "F.linear q no bias": lambda: F.linear(x, wq),
        "torch.mm q": lambda: torch.mm(x, wq.t()),
        "addmm q": lambda: torch.addmm(a.q_proj.bias, x, wq.t()),
        "linear o": lambda: a.o_proj(o),
        "router linear": lambda: m.router(x),
        "route (topk+softmax)": lambda: route(logits, 4),
        "rms_norm_fused": lambda: rms_norm_fused(x, b.input_layernorm.weight, 1e-5),
        "rms_norm_fused + residual": lambda: rms_norm_fused(x, b.input_layernorm.weight, 1e-5, x),
        "rope_fused": lambda: rope_fused(q, cos, sin, k),
        "attention_with_sinks_fused": lambda: attention_with_sinks_fused(q, k, v, a.sinks, 128),
        "moe_schedule_fused": lambda: moe_schedule_fused(idx, 32, 160),
        "moe_mxfp4_hopper": lambda: moe_mxfp4_hopper(x, idx, w, ex.gate_up_proj_blocks, ex.gate_up_proj_scales,
                                                     ex.gate_up_proj_bias, ex.down_proj_blocks, ex.down_proj_scales,
                                                     ex.down_proj_bias, ex.limit, ex.alpha),
        "torch add": lambda: x + x,
        "torch.empty": lambda: torch.empty(T, 2880, device="cuda", dtype=torch.bfloat16),
        "attn module": lambda: a(x, cos, sin),
        "moe module": lambda: m(x),
        "block": lambda: b(x, cos, sin),
        "hookpoint": lambda: b.hook_resid_post(x),
    }
    with torch.inference_mode():
        for name, fn in rows.items():
            print(f"{name:32s} {host_us(fn):8.1f} us", flush=True)


def launch_probe() -> None:
    """One Triton launch through JITFunction.run against the compiled kernel's own launcher."""
    from triton import knobs
    from gptoss_viz.runtime.kernels.fused import _rms_norm_kernel

    x = torch.randn(1024, 2880, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(2880, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    args = (x, x, w, out, x, 2880, 1e-5, x.stride(0), x.stride(0), out.stride(0), x.stride(0))
    meta = dict(HAS_RES=False, BLOCK=4096)
    k = _rms_norm_kernel[(1024,)](*args, **meta, num_warps=8)
    full = args + (False, 4096)
    dev = torch.cuda.current_device()

    def direct():
        stream = torch.cuda.current_stream().cuda_stream
        k.run(1024, 1, 1, stream, k.function, k.packed_metadata, None, knobs.runtime.launch_enter_hook,
              knobs.runtime.launch_exit_hook, *full)

    def raw_stream():
        torch._C._cuda_getCurrentRawStream(dev)

    print("jit launch", round(host_us(lambda: _rms_norm_kernel[(1024,)](*args, **meta, num_warps=8), 200), 1),
          "direct", round(host_us(direct, 200), 1), "stream query", round(host_us(raw_stream, 200), 2), flush=True)
    ref = out.clone()
    out.zero_()
    direct()
    torch.cuda.synchronize()
    print("direct equals jit:", torch.equal(out, ref))


def moe_probe() -> None:
    """The host time of each piece of one moe_mxfp4_hopper call (20b layer, 1024 tokens, its tile: 128+32)."""
    import triton
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from gptoss_viz.runtime.gptoss import route
    from gptoss_viz.runtime.kernels import moe_hopper as mh
    from gptoss_viz.runtime.kernels.fused import moe_schedule_fused, route_fused
    from gptoss_viz.runtime.kernels.launch import Launcher
    from gptoss_viz.runtime.kernels.moe import sum_slots

    cfg = gptoss_config("20b")
    cfg = dataclasses.replace(cfg, num_hidden_layers=1, layer_types=cfg.layer_types[:1])
    model = random_packed_model(cfg, "cuda")
    model.prepare_kernels()
    T, k, E, d, I = 1024, 4, 32, 2880, 2880
    m = model.blocks[0].mlp
    ex = m.experts
    x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
    idx, w = route(m.router(x), k)
    bt, bx, stages, maxnreg, narrow, halves = mh.hopper_tile(T * k / E, E)[:6]
    s = moe_schedule_fused(idx, E, bt + bx)
    xs = x.index_select(0, s.token)
    lay, lay2 = mh._rows_layout(bt), mh._rows_layout(bx)
    act = torch.empty(T * k, I, device="cuda", dtype=torch.bfloat16)
    two_i = 2 * I
    descs = (TensorDescriptor.from_tensor(xs, [bt, 64], lay), TensorDescriptor.from_tensor(xs, [bx, 64], lay2),
             TensorDescriptor.from_tensor(ex.gate_up_proj_blocks.view(torch.int32).view(E * two_i, d // 8), [64, 8],
                                          mh._WORDS),
             TensorDescriptor.from_tensor(ex.gate_up_proj_scales.view(E * (d // 64), 2 * two_i), [1, 128],
                                          mh._SCALES))

    def launch():
        mh._moe_hopper_kernel[(triton.cdiv(two_i, 64), s.n_tiles)](
            *descs, s.order, s.order, ex.gate_up_proj_bias, act, s.tile_expert, s.tile_start, s.tile_end, d, two_i,
            ex.gate_up_proj_bias.stride(0), act.stride(0), 7.0, 1.702, GATE_UP=True, TOP_K=k, BT=bt, BX=bx, BO=64,
            STAGES=stages, NARROW=narrow, HALVES=halves, ONE_MULTIPLY=True, num_warps=4)

    def direct():  # the same launch through kernels/launch.py's Launcher
        mh._moe_hopper_launch[(triton.cdiv(two_i, 64), s.n_tiles)](
            *descs, s.order, s.order, ex.gate_up_proj_bias, act, s.tile_expert, s.tile_start, s.tile_end, d, two_i,
            ex.gate_up_proj_bias.stride(0), act.stride(0), 7.0, 1.702, GATE_UP=True, TOP_K=k, BT=bt, BX=bx, BO=64,
            STAGES=stages, NARROW=narrow, HALVES=halves, ONE_MULTIPLY=True, num_warps=4)

    def hopper(descriptors=None):
        return mh.moe_mxfp4_hopper(x, idx, w, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                                   ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha,
                                   one_multiply=True, descriptors=descriptors)

    def through_jit(fn):
        def run():
            Launcher.enabled = False
            try:
                return fn()
            finally:
                Launcher.enabled = True
        return run

    kept = {}
    y = torch.empty(T * k, d, device="cuda", dtype=torch.float32)
    rows = {
        "moe module": lambda: m(x),
        "router linear": lambda: m.router(x),
        "route_fused": lambda: route_fused(m.router(x), k),
        "moe_mxfp4_hopper, JIT launches": through_jit(hopper),
        "moe_mxfp4_hopper": hopper,
        "moe_mxfp4_hopper, descriptors kept": lambda: hopper(kept),
        "hopper_tile": lambda: mh.hopper_tile(T * k / E, E),
        "moe_schedule_fused": lambda: moe_schedule_fused(idx, E, bt + bx),
        "index_select": lambda: x.index_select(0, s.token),
        "torch.empty act": lambda: torch.empty(T * k, I, device="cuda", dtype=torch.bfloat16),
        "TensorDescriptor.from_tensor": lambda: TensorDescriptor.from_tensor(xs, [bt, 64], lay),
        "gate_up launch (descriptors built)": launch,
        "the same through the Launcher": direct,
        "weight.reshape(-1).contiguous()": lambda: w.reshape(-1).contiguous(),
        "sum_slots": lambda: sum_slots(y, T, torch.bfloat16, None),
    }
    with torch.inference_mode():
        for name, fn in rows.items():
            print(f"{name:36s} {host_us(fn):8.1f} us", flush=True)
        if "--profile" in sys.argv:  # where one Gluon launch's host time goes
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            for _ in range(200):
                launch()
            pr.disable()
            torch.cuda.synchronize()
            print("# cProfile of 200 gate_up launches (descriptors built), by internal time")
            pstats.Stats(pr).strip_dirs().sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    launch_probe() if "--launch" in sys.argv else moe_probe() if "--moe" in sys.argv else main()
