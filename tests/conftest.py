"""Fixtures: tiny random checkpoints in the exact Hugging Face Hub format, written by the tests themselves.

gpt-oss: bf16 tensors, MXFP4 expert blocks/scales, sharded safetensors + index, config.json as the Hub writes it.
GPT-2: fp32, once with the official repo's names (no prefix, with causal-mask buffers) and once with the
`transformer.`-prefixed names that `save_pretrained` writes.
"""

from __future__ import annotations

import math

import pytest
import torch

from gptoss_viz.runtime.checkpoints import gpt2_hub_tensors, gptoss_hub_tensors, save_hub_checkpoint
from gptoss_viz.runtime.configs import GPT2Config, GptOssConfig, RopeScaling
from gptoss_viz.runtime.gpt2 import GPT2
from gptoss_viz.runtime.gptoss import GptOss
from gptoss_viz.train import train_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Attention sinks park probability mass; experts route tokens. "
        "def f(x):\n    return x * 2  # code and prose\n") * 20


def tiny_gptoss_config(**over) -> GptOssConfig:
    """Every feature of 20b at toy size: 4 layers alternating sliding(8)/full, GQA 4:2, 8 experts top-2, YaRN."""
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2, sliding_window=8,
              layer_types=("sliding_attention", "full_attention") * 2, max_position_embeddings=131072,
              rope_theta=150000.0, rope_scaling=RopeScaling(),
              eos_token_id=1, pad_token_id=1, quant_method="mxfp4")
    kw.update(over)
    return GptOssConfig(**kw)


def tiny_gpt2_config(**over) -> GPT2Config:
    kw = dict(vocab_size=320, n_positions=64, n_embd=48, n_layer=3, n_head=4, eos_token_id=1)
    kw.update(over)
    return GPT2Config(**kw)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights scaled so every mechanism is exercised: sinks of either sign that take visible mass,
    experts whose SwiGLU clamp (|x| > 7) triggers, router logits with clear top-k gaps."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p.data = 1 + 0.1 * torch.randn(p.shape, generator=g)
        elif name.endswith("sinks"):
            p.data = 2 * torch.randn(p.shape, generator=g)
        elif name.endswith("gate_up_proj"):
            p.data = 2.0 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
        elif p.dim() >= 2:
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
        else:
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return model


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory):
    tok = train_tokenizer([TEXT], vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def make_gptoss_dir(path, tokenizer_json, seed=0, max_shard_bytes=40_000, **over):
    cfg = tiny_gptoss_config(**over)
    model = randomize(GptOss(cfg, packed=False), seed)
    return save_hub_checkpoint(path, cfg.to_dict(), gptoss_hub_tensors(model, quantize=cfg.quant_method == "mxfp4"),
                               max_shard_bytes=max_shard_bytes, tokenizer_json=tokenizer_json)


def make_gpt2_dir(path, tokenizer_json, prefixed: bool, seed=0):
    cfg = tiny_gpt2_config()
    model = randomize(GPT2(cfg), seed)
    return save_hub_checkpoint(path, cfg.to_dict(), gpt2_hub_tensors(model, prefixed), tokenizer_json=tokenizer_json)


@pytest.fixture(scope="session")
def gptoss_dir(tmp_path_factory, tokenizer_json):
    return make_gptoss_dir(tmp_path_factory.mktemp("gptoss"), tokenizer_json)


@pytest.fixture(scope="session", params=[False, True], ids=["official-names", "transformer-prefix"])
def gpt2_dir(request, tmp_path_factory, tokenizer_json):
    return make_gpt2_dir(tmp_path_factory.mktemp("gpt2"), tokenizer_json, prefixed=request.param)


@pytest.fixture(autouse=True, scope="session")
def _check_kernel_launches():
    """On a GPU, every kernel launch that skips the Triton JIT (kernels/launch.py) is checked against the kernel
    the JIT would have run."""
    from gptoss_viz.runtime.kernels import available

    if torch.cuda.is_available() and available(torch.device("cuda")):  # (a CUDA machine may lack Triton)
        from gptoss_viz.runtime.kernels.launch import Launcher

        Launcher.check = True
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped without one, except that TRITON_INTERPRET=1 runs the
    kernel tests that allow it on the CPU through Triton's interpreter (small shapes; see test_kernels_gpu.py)."""
    import os

    if torch.cuda.is_available():
        return
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not (interpret and "interpretable" in item.keywords):
            item.add_marker(skip)
