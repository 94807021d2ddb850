"""The random full-size checkpoint generator (benchmarks on the GPU machine, which cannot reach the Hub) writes
exactly the Hub's layout: SPEC.md's tensor count and byte total at full size, and a file transformers reads the
way our loader does (checked here at toy size, on the CPU)."""

from __future__ import annotations

import json

import torch

from gptoss_viz import load_model
from gptoss_viz.runtime.random_checkpoint import (gptoss_config, plan_bytes, random_packed_model, shard_plan,
                                                  tensor_plan, write_random_checkpoint)

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_local_experts=8, eos_token_id=1, pad_token_id=1)


def test_full_size_plans_match_spec():
    for size, n, nbytes in (("20b", 459, 13_761_264_768), ("120b", 687, 65_248_815_744)):
        plan = tensor_plan(gptoss_config(size))
        assert (len(plan), plan_bytes(plan)) == (n, nbytes), f"{size}: {len(plan)} tensors, {plan_bytes(plan)} bytes"
    shards = shard_plan(tensor_plan(gptoss_config("20b")), 3)
    sizes = [plan_bytes(s) for s in shards]
    assert len(shards) == 3 and max(sizes) < 1.1 * min(sizes), f"uneven shards {sizes}"


def test_written_checkpoint_loads_in_ours_and_transformers(tmp_path, tokenizer_json):
    from transformers import GptOssForCausalLM, Mxfp4Config

    cfg = gptoss_config("20b", **TINY)
    path = write_random_checkpoint(tmp_path, cfg, n_shards=3, seed=1, tokenizer_json=tokenizer_json)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00002.safetensors" for i in range(3)]
    ours = load_model(path, dtype=torch.float32)
    hf = GptOssForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                           quantization_config=Mxfp4Config(dequantize=True)).eval()
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids), hf(ids[None]).logits[0]
    worst = (a - b).abs().max().item()
    assert worst < 1e-3, f"logits of the random checkpoint differ from transformers' by {worst:.3g}"
    # the in-memory builder goes through the same loader and gives the same model for the same seed
    mem = random_packed_model(cfg, "cpu", seed=1)
    with torch.no_grad():
        assert torch.equal(mem(ids), load_model(path)(ids)), "in-memory and on-disk random models differ"
