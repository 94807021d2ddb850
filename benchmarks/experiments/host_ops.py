"""Host time of each launch of one 20b layer at 1024 tokens (perf_counter over 50 calls, GPU queue not full),
for the launch-cost work of issue 6. Development probe."""

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


if __name__ == "__main__":
    launch_probe() if "--launch" in sys.argv else main()
