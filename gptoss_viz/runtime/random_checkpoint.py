"""Full-size gpt-oss checkpoints with random weights, in the Hub's exact format, for benchmarks and GPU tests.

The GPU machines cannot reach the Hub, so speed and memory are measured on random weights of the real shapes:
the same tensor names, shapes, dtypes (bf16, MXFP4 experts as uint8 blocks + scales) and sharding (20b: three
shards + model.safetensors.index.json) as SPEC.md lists. Time and memory depend only on those, not on the values.
The values are scaled like a trained model's (projections ~ 1/sqrt(fan-in), MXFP4 scales near 2^-7 so an
expert row has rms ~ 1/sqrt(2880), router logits of order 1, sinks of either sign) so the forward pass
exercises routing, sinks and the SwiGLU clamp with no overflow.

Two ways in:
- `write_random_checkpoint(dir, cfg)`: a Hub-format directory on disk, written one shard at a time (host memory
  peaks at one shard), loaded like any other with `load_model(dir, device="cuda")`.
- `random_packed_model(cfg, device)`: the model built directly in (GPU) memory through the same loader code
  (`load_state`), for 120b, whose 65 GB does not fit the GPU machine's disk next to anything else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from gptoss_viz.runtime.configs import GptOssConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def gptoss_config(size: str, **over) -> GptOssConfig:
    """gpt-oss-20b or gpt-oss-120b as SPEC.md's config table gives them (`over` replaces fields, e.g. fewer
    layers or a small vocabulary for tests that need only the layer shapes)."""
    layers, experts = {"20b": (24, 32), "120b": (36, 128)}[size]
    d = dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=layers,
             num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=experts,
             num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072, rope_theta=150000.0,
             rms_norm_eps=1e-5, swiglu_limit=7.0, attention_bias=True, tie_word_embeddings=False,
             eos_token_id=200002, pad_token_id=199999,
             rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                           "original_max_position_embeddings": 4096, "truncate": False},
             quantization_config={"quant_method": "mxfp4"})
    d.update(over)
    d["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                        for i in range(d["num_hidden_layers"])]
    return GptOssConfig.from_dict(d)


def tensor_plan(cfg: GptOssConfig) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Every checkpoint tensor as (Hub name, shape, dtype), in the Hub's order (SPEC.md's tensor table)."""
    d, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    E, I, V = cfg.num_local_experts, cfg.intermediate_size, cfg.vocab_size
    bf, u8 = torch.bfloat16, torch.uint8
    plan = [("model.embed_tokens.weight", (V, d), bf)]
    for L in range(cfg.num_hidden_layers):
        p = f"model.layers.{L}."
        plan += [(p + "input_layernorm.weight", (d,), bf), (p + "post_attention_layernorm.weight", (d,), bf),
                 (p + "self_attn.q_proj.weight", (H * D, d), bf), (p + "self_attn.q_proj.bias", (H * D,), bf),
                 (p + "self_attn.k_proj.weight", (K * D, d), bf), (p + "self_attn.k_proj.bias", (K * D,), bf),
                 (p + "self_attn.v_proj.weight", (K * D, d), bf), (p + "self_attn.v_proj.bias", (K * D,), bf),
                 (p + "self_attn.o_proj.weight", (d, H * D), bf), (p + "self_attn.o_proj.bias", (d,), bf),
                 (p + "self_attn.sinks", (H,), bf),
                 (p + "mlp.router.weight", (E, d), bf), (p + "mlp.router.bias", (E,), bf),
                 (p + "mlp.experts.gate_up_proj_blocks", (E, 2 * I, d // 32, 16), u8),
                 (p + "mlp.experts.gate_up_proj_scales", (E, 2 * I, d // 32), u8),
                 (p + "mlp.experts.gate_up_proj_bias", (E, 2 * I), bf),
                 (p + "mlp.experts.down_proj_blocks", (E, d, I // 32, 16), u8),
                 (p + "mlp.experts.down_proj_scales", (E, d, I // 32), u8),
                 (p + "mlp.experts.down_proj_bias", (E, d), bf)]
    plan += [("model.norm.weight", (d,), bf), ("lm_head.weight", (V, d), bf)]
    return plan


def plan_bytes(plan) -> int:
    return sum(math.prod(shape) * torch.finfo(dt).bits // 8 if dt.is_floating_point else math.prod(shape)
               for _, shape, dt in plan)


# E8M0 scales 119/120 = 2^-8 / 2^-7: uniformly random E2M1 codes have rms 2.93, so a row's rms is ~0.016, the
# 1/sqrt(2880) = 0.0186 of a fan-in-scaled init.
SCALE_CHOICES = (119, 120)


def random_tensor(name: str, shape, dtype, gen: torch.Generator, device) -> torch.Tensor:
    """A random tensor for checkpoint tensor `name`, scaled as described in the module docstring."""
    if dtype == torch.uint8:
        if name.endswith("_scales"):
            lo, hi = SCALE_CHOICES
            return torch.randint(lo, hi + 1, shape, generator=gen, device=device, dtype=torch.uint8)
        return torch.randint(0, 256, shape, generator=gen, device=device, dtype=torch.uint8)
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        t = 1 + 0.05 * torch.randn(shape, generator=gen, device=device)
    elif name.endswith("sinks"):  # scores' row logsumexp is ~5-8 at a few hundred keys: visible sink mass
        t = 4 + 2 * torch.randn(shape, generator=gen, device=device)
    elif name == "model.embed_tokens.weight":
        t = torch.randn(shape, generator=gen, device=device)
    elif len(shape) >= 2:  # projections, router, lm_head: fan-in scaling
        t = torch.randn(shape, generator=gen, device=device) / math.sqrt(shape[-1])
    else:  # biases
        t = 0.02 * torch.randn(shape, generator=gen, device=device)
    return t.to(dtype)


def random_tensors(cfg: GptOssConfig, device, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, shape, dtype in tensor_plan(cfg):
        yield name, random_tensor(name, shape, dtype, gen, device)


def shard_plan(plan, n_shards: int) -> list[list]:
    """Cut the plan, in order, into n_shards pieces of about equal bytes."""
    total = plan_bytes(plan)
    shards: list[list] = [[]]
    size = 0
    for item in plan:
        nbytes = plan_bytes([item])
        if shards[-1] and size + nbytes > total / n_shards * 1.02 and len(shards) < n_shards:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def write_random_checkpoint(out_dir, cfg: GptOssConfig, n_shards: int = 3, device="cpu", seed: int = 0,
                            tokenizer_json=None) -> Path:
    """Write config.json, n_shards safetensors shards and model.safetensors.index.json, one shard in memory at a
    time. Shards are named as in the openai/gpt-oss-20b repo (model-00000-of-00002.safetensors, ...: numbered
    from 0, "of" the last index). `device` is where the random numbers are drawn (a GPU is much faster)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    gen = torch.Generator(device=device).manual_seed(seed)
    plan = tensor_plan(cfg)
    weight_map = {}
    shards = shard_plan(plan, n_shards)
    for i, items in enumerate(shards):
        fname = f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors"
        tensors = {name: random_tensor(name, shape, dt, gen, device).cpu() for name, shape, dt in items}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
        weight_map.update({name: fname for name, _, _ in items})
        log.info("wrote %s (%d tensors)", fname, len(items))
    index = {"metadata": {"total_size": plan_bytes(plan)}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    tok = Path(tokenizer_json) if tokenizer_json else REPO_ROOT / "model" / "gpt-oss-nano" / "tokenizer.json"
    if tok.is_file():  # a stand-in tokenizer (ids < 201088); the weights are random anyway
        shutil.copyfile(tok, out / "tokenizer.json")
    return out


def random_packed_model(cfg: GptOssConfig, device, seed: int = 0):
    """The model with random weights built straight on `device` through the checkpoint loader (names, shapes and
    MXFP4 scale checks as for a real file); experts stay packed, so it takes the checkpoint's size in memory."""
    from gptoss_viz.runtime.checkpoints import gptoss_key, load_state
    from gptoss_viz.runtime.gptoss import GptOss

    with torch.device("meta"):
        model = GptOss(cfg)
    load_state(model, random_tensors(cfg, device, seed), gptoss_key)
    return model.eval()


def disk_free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
