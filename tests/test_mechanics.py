"""The mechanisms the explainer shows, each checked against SPEC.md's numbers or an independent computation:
attention sinks, the sliding window, RoPE/YaRN, MXFP4, grouped-query attention, the router and the experts.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TEXT, make_gptoss_dir
from gptoss_viz import ModelLoadError, load_model
from gptoss_viz.runtime.configs import GptOssConfig
from gptoss_viz.runtime.mxfp4 import (from_hopper_order, from_hopper_scales, mxfp4_dequant, mxfp4_quantize,
                                      mxfp4_unpack_codes, to_hopper_order, to_hopper_scales)
from gptoss_viz.runtime.rope import (apply_rope, inv_freq_for, rope_cos_sin, rope_inv_freq, yarn_concentration,
                                     yarn_correction_range, yarn_inv_freq)

# gpt-oss-20b/120b RoPE settings (SPEC.md)
YARN_20B = dict(head_dim=64, theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
                original_max_position_embeddings=4096, truncate=False)


def max_diff_report(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a.float() - b.float()).abs()
    at = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
    return f"max |diff| {diff.max().item():.3g} at {at}: {a[at].item()!r} vs {b[at].item()!r}"


@pytest.fixture(scope="module")
def model(gptoss_dir):
    return load_model(gptoss_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def run(model):
    """One sequence several windows long, every hook cached."""
    ids = torch.tensor(model.tokenizer.encode(TEXT[:120]))
    assert len(ids) > 3 * model.config.sliding_window
    logits, cache = model.run_with_cache(ids)
    return ids, logits, cache


# ---------------------------------------------------------------------------------------------------------------
# Attention sinks and the sliding window

def test_pattern_rows_plus_sink_sum_to_one(model, run):
    _, _, cache = run
    for i in range(model.config.num_hidden_layers):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]  # [H, T, T]
        sink = cache[f"blocks.{i}.attn.hook_sink_prob"]  # [H, T]
        total = pattern.sum(-1) + sink
        err = (total - 1).abs().max().item()
        assert err < 1e-6, f"layer {i}: pattern row + sink differs from 1 by up to {err:.3g}"
        assert (sink > 0).all() and (sink < 1).all(), f"layer {i}: sink probabilities outside (0, 1)"
        assert (pattern >= 0).all(), f"layer {i}: negative attention probabilities"


def test_sink_prob_is_the_softmax_of_the_sink_column(model, run):
    """p_sink from the same softmax: exp(sink) / (sum_j exp(s_j) + exp(sink)) with the unscaled sink logit."""
    _, _, cache = run
    H, D = model.config.num_attention_heads, model.config.head_dim
    G = H // model.config.num_key_value_heads
    for i in range(model.config.num_hidden_layers):
        q = cache[f"blocks.{i}.attn.hook_q_rot"]
        k = cache[f"blocks.{i}.attn.hook_k_rot"]
        T = q.shape[0]
        window = model.blocks[i].attn.window
        pos = torch.arange(T)
        allowed = pos[None, :] <= pos[:, None]
        if window is not None:
            allowed &= (pos[:, None] - pos[None, :]) < window
        sinks = model.blocks[i].attn.sinks.detach()
        for h in range(H):
            s = (q[:, h] @ k[:, h // G].T) / math.sqrt(D)  # [T, T]
            s = s.masked_fill(~allowed, float("-inf"))
            full = torch.cat([s, sinks[h].expand(T, 1)], dim=1).softmax(-1)
            got = cache[f"blocks.{i}.attn.hook_sink_prob"][h]
            assert torch.allclose(got, full[:, -1], atol=1e-6), f"layer {i} head {h} sink prob: " + \
                max_diff_report(got, full[:, -1])


def test_sliding_layers_see_exactly_the_window_full_layers_see_beyond(model, run):
    _, _, cache = run
    W = model.config.sliding_window
    T = cache["hook_embed"].shape[0]
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    future, beyond, edge = k > q, (q - k) >= W, (q - k) == W - 1
    n_sliding = n_full = 0
    for i, kind in enumerate(model.config.layer_types):
        p = cache[f"blocks.{i}.attn.hook_pattern"]  # [H, T, T]
        assert (p[:, future] == 0).all(), f"layer {i}: attention to future tokens"
        mass_beyond = p[:, beyond].sum().item()
        if kind == "sliding_attention":
            n_sliding += 1
            assert model.blocks[i].attn.window == W
            assert (p[:, beyond] == 0).all(), \
                f"layer {i} (sliding, window {W}): mass {mass_beyond:.3g} on keys {W} or more positions back"
            # the window counts the query itself: the key W-1 back is still visible
            assert (p[:, edge] > 0).all(), f"layer {i}: no attention to the key {W - 1} positions back"
        else:
            n_full += 1
            assert mass_beyond > 1e-2, f"layer {i} (full): only {mass_beyond:.3g} mass beyond {W} positions back"
    assert n_sliding == 2 and n_full == 2, f"fixture has {n_sliding} sliding / {n_full} full layers"


def test_window_override_reaches_sliding_layers_only(model, run):
    ids, logits, cache = run
    W = 4
    _, c = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"), window=W)
    T = len(ids)
    beyond = (torch.arange(T)[:, None] - torch.arange(T)[None, :]) >= W
    assert (c["blocks.0.attn.hook_pattern"][:, beyond] == 0).all(), "window override not applied to layer 0"
    assert (c["blocks.0.attn.hook_pattern"][:, (torch.arange(T)[:, None] - torch.arange(T)[None, :]) == W - 1]
            > 0).all(), "window override cut off more than it should"
    assert c["blocks.1.attn.hook_pattern"][:, beyond].sum() > 0, "window override reached a full layer"


# ---------------------------------------------------------------------------------------------------------------
# RoPE / YaRN

def test_yarn_numbers_for_20b():
    low, high = yarn_correction_range(YARN_20B["head_dim"], YARN_20B["theta"], YARN_20B["factor"],
                                      YARN_20B["beta_fast"], YARN_20B["beta_slow"],
                                      YARN_20B["original_max_position_embeddings"], YARN_20B["truncate"])
    assert round(low, 4) == 8.0928, f"YaRN low boundary {low!r}, expected 8.0928"
    assert round(high, 4) == 17.3980, f"YaRN high boundary {high!r}, expected 17.3980"
    inv_freq, conc = yarn_inv_freq(**YARN_20B)
    assert round(conc, 5) == 1.34657, f"concentration {conc!r}, expected 1.34657"
    assert conc == pytest.approx(yarn_concentration(32.0))
    plain = rope_inv_freq(64, 150000.0)
    assert inv_freq.shape == (32,) and inv_freq.dtype == torch.float32
    assert inv_freq[0].item() == pytest.approx(plain[0].item(), rel=1e-7), "pair 0 must keep its RoPE frequency"
    assert inv_freq[0].item() == pytest.approx(1.0, rel=1e-7)
    assert inv_freq[31].item() == pytest.approx(plain[31].item() / 32, rel=1e-6), "pair 31 must be RoPE / 32"
    assert inv_freq[31].item() == pytest.approx(150000.0 ** (-62 / 64) / 32, rel=1e-6)
    # pairs up to low keep their frequency, pairs from high on are interpolated by 1/32, in between is a ramp
    for i in range(32):
        ratio = (inv_freq[i] / plain[i]).item()
        if i <= 8:
            assert ratio == pytest.approx(1.0, rel=1e-6), f"pair {i}: ratio {ratio} (expected 1: fast pair)"
        elif i >= 18:
            assert ratio == pytest.approx(1 / 32, rel=1e-6), f"pair {i}: ratio {ratio} (expected 1/32)"
        else:
            r = (i - low) / (high - low)
            assert ratio == pytest.approx((1 - r) + r / 32, rel=1e-5), f"pair {i}: ramp ratio {ratio}"


def test_truncate_rounds_the_boundaries():
    low, high = yarn_correction_range(64, 150000.0, 32.0, 32.0, 1.0, 4096, truncate=True)
    assert (low, high) == (8, 18), f"truncate=True boundaries {(low, high)}, expected (8, 18)"


def hub_20b_config_dict(rope_key: str) -> dict:
    rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": 4096, "truncate": False}
    d = {"model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
         "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
         "num_local_experts": 32, "num_experts_per_tok": 4, "sliding_window": 128,
         "max_position_embeddings": 131072, "quantization_config": {"quant_method": "mxfp4"}}
    if rope_key == "rope_scaling":
        d.update(rope_theta=150000.0, rope_scaling=rope)
    else:
        d["rope_parameters"] = dict(rope, rope_theta=150000.0)
    return d


@pytest.mark.parametrize("rope_key", ["rope_scaling", "rope_parameters"])
def test_our_yarn_matches_transformers_for_20b(rope_key):
    from transformers import GptOssConfig as HFGptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": 4096, "truncate": False, "rope_theta": 150000.0}
    hf_cfg = HFGptOssConfig(head_dim=64, num_attention_heads=64, hidden_size=2880, max_position_embeddings=131072,
                            rope_parameters=rope)
    assert hf_cfg.rope_parameters["rope_type"] == "yarn" and hf_cfg.rope_parameters["truncate"] is False
    ref_inv_freq, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")

    ours_cfg = GptOssConfig.from_dict(hub_20b_config_dict(rope_key))
    assert ours_cfg.rope_scaling is not None and ours_cfg.rope_scaling.truncate is False
    inv_freq, conc = inv_freq_for(ours_cfg)
    assert inv_freq.shape == ref_inv_freq.shape, f"{inv_freq.shape} vs transformers' {ref_inv_freq.shape}"
    rel = ((inv_freq.double() - ref_inv_freq.double()).abs() / ref_inv_freq.double().abs()).max().item()
    assert rel < 1e-6, f"inv_freq differs from transformers' yarn by up to {rel:.3g} (relative)"
    assert conc == pytest.approx(ref_factor, rel=1e-6), f"concentration {conc} vs transformers' {ref_factor}"


def test_rotation_is_half_split_and_scaled(model, run):
    """hook_q_rot = rotate pairs (i, i + D/2) of hook_q by position * inv_freq_i, times the concentration."""
    _, _, cache = run
    cfg = model.config
    D = cfg.head_dim
    inv_freq, conc = inv_freq_for(cfg)
    q = cache["blocks.0.attn.hook_q"].double()  # [T, H, D]
    T = q.shape[0]
    ang = torch.arange(T, dtype=torch.float64)[:, None, None] * inv_freq.double()[None, None, :]  # [T, 1, D/2]
    x1, x2 = q[..., : D // 2], q[..., D // 2:]
    manual = conc * torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], dim=-1)
    got = cache["blocks.0.attn.hook_q_rot"]
    assert torch.allclose(got.double(), manual, atol=1e-4, rtol=1e-4), "q rotation: " + max_diff_report(got, manual)
    # and the pure functions agree with the hook
    cos, sin = rope_cos_sin(torch.arange(T), inv_freq, conc)
    assert torch.equal(apply_rope(cache["blocks.0.attn.hook_q"], cos, sin), got)
    # position 0 is not rotated, only scaled by the concentration
    assert torch.allclose(got[0], conc * cache["blocks.0.attn.hook_q"][0], atol=1e-6)


def test_rope_tables_give_each_length_the_freshly_computed_rows():
    """GptOss.rope keeps one table per device and variant and hands out its first T rows: equal bit for bit to
    cos/sin computed for exactly T positions, at lengths below, at and above the first table's, both variants; a
    longer prompt grows the table, a shorter one reuses it."""
    from conftest import tiny_gptoss_config

    from gptoss_viz.runtime.gptoss import GptOss

    m = GptOss(tiny_gptoss_config(max_position_embeddings=4096))
    inv_freq, conc = inv_freq_for(m.config)
    plain = rope_inv_freq(m.config.head_dim, m.config.rope_theta)
    for T in (1, 7, 1023, 1024, 1025, 3000, 5):
        for variant, (f, c) in ((None, (inv_freq, conc)), ("plain", (plain, 1.0))):
            cos, sin = m.rope(T, "cpu", variant)
            ref_cos, ref_sin = rope_cos_sin(torch.arange(T), f, c)
            assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin), (T, variant)
    assert len(m._rope_tables) == 2  # one table per variant, grown to 4096 rows by T = 3000
    assert all(t[0].shape[0] == 4096 for t in m._rope_tables.values())
    assert m.rope(10, "cpu")[0].data_ptr() == m.rope(20, "cpu")[0].data_ptr()  # views of one table
    assert not torch.equal(m.rope(64, "cpu")[0], m.rope(64, "cpu", "plain")[0])
    with pytest.raises(ValueError, match="unknown RoPE variant"):
        m.rope(4, "cpu", "ntk")


def test_rope_tables_made_under_inference_mode_serve_training():
    """A table first made inside torch.inference_mode (the app's and the benchmarks' forwards) is an ordinary
    tensor: a later forward under autograd (training) can save it for backward."""
    from conftest import tiny_gptoss_config

    from gptoss_viz.runtime.gptoss import GptOss

    m = GptOss(tiny_gptoss_config(max_position_embeddings=4096))
    ids = torch.randint(0, 300, (12,))
    with torch.inference_mode():
        m(ids)
    m(ids).float().sum().backward()
    assert m.embed_tokens.weight.grad is not None


# ---------------------------------------------------------------------------------------------------------------
# MXFP4

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def one_block(first_bytes: list[int]) -> torch.Tensor:
    b = torch.zeros(1, 16, dtype=torch.uint8)  # one block: [nb=1, 16]
    b[0, : len(first_bytes)] = torch.tensor(first_bytes, dtype=torch.uint8)
    return b


def test_mxfp4_nibble_order_and_values_on_hand_built_bytes():
    blocks = one_block([0x21, 0xF8])
    v = mxfp4_dequant(blocks, torch.tensor([127], dtype=torch.uint8), torch.float32)
    assert v.shape == (32,), f"one block dequantizes to {tuple(v.shape)}, expected (32,)"
    assert v[:4].tolist() == [0.5, 1.0, -0.0, -6.0], f"bytes 0x21 0xF8 -> {v[:4].tolist()}"
    assert torch.signbit(v[2]), "code 8 must be -0.0"
    assert (v[4:] == 0).all()
    v2 = mxfp4_dequant(blocks, torch.tensor([128], dtype=torch.uint8), torch.float32)
    assert v2[:4].tolist() == [1.0, 2.0, -0.0, -12.0], f"scale 128 must double: {v2[:4].tolist()}"
    v_half = mxfp4_dequant(blocks, torch.tensor([126], dtype=torch.uint8), torch.float32)
    assert v_half[:4].tolist() == [0.25, 0.5, -0.0, -3.0], f"scale 126 must halve: {v_half[:4].tolist()}"
    assert mxfp4_unpack_codes(blocks)[0, :4].tolist() == [1, 2, 8, 15]


def test_mxfp4_full_e2m1_table():
    # byte k holds code k in its low nibble and code 15 - k in its high nibble
    blocks = torch.tensor([[k | ((15 - k) << 4) for k in range(16)]], dtype=torch.uint8)
    v = mxfp4_dequant(blocks, torch.tensor([127], dtype=torch.uint8), torch.float32)
    want = [x for k in range(16) for x in (E2M1[k], E2M1[15 - k])]
    assert v.tolist() == want, f"E2M1 table: got {v.tolist()}"
    assert [bool(s) for s in torch.signbit(v)] == [math.copysign(1, x) < 0 for x in want], "sign bits differ"
    # extreme scales: 2^-127 and 2^127, exact in fp32
    lo = mxfp4_dequant(blocks, torch.tensor([0], dtype=torch.uint8), torch.float32)
    hi = mxfp4_dequant(blocks, torch.tensor([254], dtype=torch.uint8), torch.float32)
    assert lo[4].item() == 2.0 ** -127 and hi[4].item() == 2.0 ** 127, f"{lo[4].item()}, {hi[4].item()}"


def test_mxfp4_shapes_rows_of_blocks():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), generator=g, dtype=torch.uint8)  # [E, rows, nb, 16]
    scales = torch.randint(100, 150, (3, 5, 4), generator=g, dtype=torch.uint8)
    v = mxfp4_dequant(blocks, scales, torch.float32)
    assert v.shape == (3, 5, 128)
    # block j of row r covers columns 32j..32j+31 with its own scale
    e, r, j = 2, 3, 1
    manual = torch.tensor([E2M1[c] for c in mxfp4_unpack_codes(blocks[e, r, j]).tolist()]) * 2.0 ** (
        int(scales[e, r, j]) - 127)
    assert torch.equal(v[e, r, 32 * j: 32 * j + 32], manual)


def test_mxfp4_quantize_dequantize_exact_on_representable_values():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (6, 8, 32), generator=g)  # [rows, nb, 32]
    codes[..., 0] = 7  # each block holds a +6 (code 7) so its scale is the one we chose
    scales = torch.randint(60, 200, (6, 8), generator=g)
    values = torch.tensor(E2M1)[codes] * torch.pow(2.0, (scales - 127).double()).float()[..., None]
    values = values.flatten(-2)  # [rows, 256]
    blocks, qscales = mxfp4_quantize(values)
    assert blocks.dtype == torch.uint8 and blocks.shape == (6, 8, 16) and qscales.shape == (6, 8)
    assert torch.equal(qscales.long(), scales), "quantize picked other scales than the representable ones"
    back = mxfp4_dequant(blocks, qscales, torch.float32)
    assert torch.equal(back, values), "quantize -> dequantize not exact: " + max_diff_report(back, values)
    # codes equal too, except that -0.0 may come back as +0.0
    got_codes = mxfp4_unpack_codes(blocks).long()
    want_codes = torch.where(codes == 8, 0, codes)
    assert torch.equal(torch.where(got_codes == 8, 0, got_codes), want_codes)


def test_mxfp4_quantize_blocks_with_smaller_maxima_stay_exact():
    """A block whose largest magnitude is below 6 is still exactly representable at a smaller scale."""
    for top in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]:
        mags = [x for x in E2M1[:8] if x <= top]
        vals = torch.tensor([mags[i % len(mags)] * (-1) ** i for i in range(32)]) * 2.0 ** -3
        vals[0] = top * 2.0 ** -3
        b, s = mxfp4_quantize(vals)
        back = mxfp4_dequant(b, s, torch.float32)
        assert torch.equal(back, vals), f"block max {top}: " + max_diff_report(back, vals)


def test_mxfp4_scale_255_rejected_on_load(tmp_path, tokenizer_json):
    import json

    from safetensors.torch import load_file, save_file

    path = make_gptoss_dir(tmp_path / "nan", tokenizer_json, seed=2)
    name = "model.layers.1.mlp.experts.down_proj_scales"
    shard = path / json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name][3, 5, 0] = 255
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    msg = str(e.value)
    assert name in msg and "255" in msg and "NaN" in msg, f"message does not name the tensor and the cause: {msg}"


def test_hopper_order_places_each_value_where_the_kernel_reads_it():
    """Lane group t, block p, byte b of a 64-value chunk (byte 8t + 4p + b) holds K = 32p + 2t + (b & 1) +
    8 (b >> 1) in its low nibble and K + 16 in its high one (kernels/moe_hopper.py reads them so); the inverse
    gives the bytes back."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 6, 16), dtype=torch.uint8, generator=g)
    h = to_hopper_order(blocks)
    assert h.shape == blocks.shape and torch.equal(from_hopper_order(h), blocks)
    codes = mxfp4_unpack_codes(blocks).reshape(3, 5, 3, 64)  # value K of each chunk
    for t in range(4):
        for p in range(2):
            for b in range(4):
                byte = h.reshape(3, 5, 3, 32)[..., 8 * t + 4 * p + b]
                k = 32 * p + 2 * t + (b & 1) + 8 * (b >> 1)
                assert torch.equal(byte & 15, codes[..., k]) and torch.equal(byte >> 4, codes[..., k + 16])
    with pytest.raises(ValueError, match="multiple of 64"):
        to_hopper_order(blocks[:, :, :3])


def test_hopper_scales_order_puts_one_steps_rows_together():
    """to_hopper_scales: per leading index, K step s (64 values: scales 2s, 2s + 1 of a row) of row r at byte
    2N s + 2r + p, so one step's scales of 64 consecutive rows are 128 consecutive bytes; the inverse gives them
    back."""
    g = torch.Generator().manual_seed(1)
    scales = torch.randint(0, 256, (3, 128, 6), dtype=torch.uint8, generator=g)
    h = to_hopper_scales(scales)
    assert h.shape == scales.shape and torch.equal(from_hopper_scales(h), scales)
    flat = h.reshape(3, -1)
    for step in range(3):
        for row in (0, 5, 63, 64, 127):
            for p in range(2):
                assert torch.equal(flat[:, 256 * step + 2 * row + p], scales[:, row, 2 * step + p])
    with pytest.raises(ValueError, match="multiple of 64"):
        to_hopper_scales(scales[..., :5])


def test_experts_in_hopper_order_compute_and_save_the_same():
    """The re-arranged blocks and scales change nothing a user sees: the reference forward, the dequantized
    weights and the state dict (saved in the checkpoint's order) are identical, also after loading a state dict
    (whole or partial) into the re-arranged module."""
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=1, vocab_size=64, hidden_size=128, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    model = random_packed_model(cfg, "cpu", seed=3).float()
    ex = model.blocks[0].mlp.experts
    ids = torch.arange(20) % 64
    with torch.no_grad():
        before = model(ids)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    w_before = ex.weights(2, torch.float32)
    ex.use_hopper_order()
    assert ex.blocks_order == "hopper"
    assert not torch.equal(ex.gate_up_proj_blocks, sd["blocks.0.mlp.experts.gate_up_proj_blocks"])
    assert not torch.equal(ex.gate_up_proj_scales, sd["blocks.0.mlp.experts.gate_up_proj_scales"])
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert all(torch.equal(a, b) for a, b in zip(ex.weights(2, torch.float32), w_before))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in sd.items())
    model.load_state_dict(sd)  # keeps the Hopper order: the loaded checkpoint-order blocks are re-arranged
    assert ex.blocks_order == "hopper"
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    partial = {"blocks.0.mlp.experts.down_proj_blocks": sd["blocks.0.mlp.experts.down_proj_blocks"],
               "blocks.0.mlp.experts.gate_up_proj_scales": sd["blocks.0.mlp.experts.gate_up_proj_scales"]}
    model.load_state_dict(partial, strict=False)
    with torch.no_grad():
        assert torch.equal(model(ids), before)


def test_experts_note_whether_the_one_multiply_decode_is_exact():
    """Experts.one_multiply (the Hopper kernels may decode with one bf16 multiply, which is exact only when no scale
    is above 128) is read when the blocks are re-arranged and again whenever a state dict brings new scales; one
    scale of 129 anywhere, in either projection, turns it off."""
    from gptoss_viz.runtime.gptoss import ONE_MULTIPLY_MAX_SCALE
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=1, vocab_size=64, hidden_size=128, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    model = random_packed_model(cfg, "cpu", seed=3)
    ex = model.blocks[0].mlp.experts
    assert ONE_MULTIPLY_MAX_SCALE == 128
    assert not ex.one_multiply  # not read before the Hopper order is taken
    ex.use_hopper_order()
    assert ex.one_multiply  # random_checkpoint's scales sit at 119/120, as trained ones near 127
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for name, at in (("down_proj_scales", (3, 127, 1)), ("gate_up_proj_scales", (0, 5, 2))):
        key = f"blocks.0.mlp.experts.{name}"
        for value, exact in ((128, True), (129, False), (254, False), (0, True)):
            changed = dict(sd)
            changed[key] = sd[key].clone()
            changed[key][at] = value
            model.load_state_dict(changed)
            assert ex.one_multiply == exact, (name, value)
            assert torch.equal(model.state_dict()[key], changed[key])  # (saved as loaded, checkpoint order)
        model.load_state_dict(sd)
        assert ex.one_multiply


def test_fused_qkv_keeps_parameters_state_dict_and_outputs():
    """Attention.fuse_qkv (what the GPU fast path runs: q, k and v from one matmul) makes the three projections'
    parameters views of one tensor: the state dict and the forward are unchanged, a loaded state dict lands in the
    fused tensor, and moving the module or reassigning a parameter ends the fusion instead of leaving it stale."""
    import torch.nn.functional as F

    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=1, vocab_size=64, hidden_size=128, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    model = random_packed_model(cfg, "cpu", seed=5).float()
    attn = model.blocks[0].attn
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(20) % 64
    with torch.no_grad():
        before = model(ids)
        projs = [p(x) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    attn.fuse_qkv()
    fused = attn._fused_qkv()
    assert fused is not None
    w, b = fused
    assert w.shape == (4 * 64 + 2 * 2 * 64, 128) and attn.k_proj.weight.data_ptr() == w[4 * 64].data_ptr()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    with torch.no_grad():
        assert torch.equal(model(ids), before)
        one = F.linear(x, w, b).split([256, 128, 128], -1)
        assert all(torch.allclose(a, r, atol=1e-5) for a, r in zip(one, projs))
    new = {k: (v + 1 if ".attn.k_proj." in k else v) for k, v in sd.items()}
    model.load_state_dict(new)  # copies into the views: the fused weight follows
    assert attn._fused_qkv() is not None and torch.equal(w[256:384], sd["blocks.0.attn.k_proj.weight"] + 1)
    model.to(torch.float64)  # new storage for every parameter
    assert attn._fused_qkv() is None and attn._qkv is None
    attn.fuse_qkv()
    attn.v_proj.weight = torch.nn.Parameter(attn.v_proj.weight.detach().clone())
    assert attn._fused_qkv() is None


def test_moe_residual_is_the_blocks_add():
    """MoE(x, residual) returns residual + MoE(x): the reference path adds after the hook, as the block did."""
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=1, vocab_size=64, hidden_size=128, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    mlp = random_packed_model(cfg, "cpu", seed=4).blocks[0].mlp
    g = torch.Generator().manual_seed(1)
    x, r = (torch.randn(9, 128, generator=g).to(torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        assert torch.equal(mlp(x, residual=r), r + mlp(x))


# ---------------------------------------------------------------------------------------------------------------
# Grouped-query attention

def test_gqa_query_head_reads_kv_head_h_div_group(model, run):
    """Recompute each head's pattern with key head h // (H/K) and compare; the other plausible mapping (h % K)
    must give a different pattern, so the check can tell them apart."""
    _, _, cache = run
    cfg = model.config
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    G = H // K
    assert G > 1 and K > 1, "the fixture must have several KV heads each shared by several query heads"
    T = cache["hook_embed"].shape[0]
    pos = torch.arange(T)
    for i in range(cfg.num_hidden_layers):
        q, k, v = (cache[f"blocks.{i}.attn.hook_{n}"] for n in ("q_rot", "k_rot", "v"))
        window = model.blocks[i].attn.window
        allowed = pos[None, :] <= pos[:, None]
        if window is not None:
            allowed &= (pos[:, None] - pos[None, :]) < window
        sinks = model.blocks[i].attn.sinks.detach()
        got = cache[f"blocks.{i}.attn.hook_pattern"]

        def pattern_with(kv_of):
            out = []
            for h in range(H):
                s = (q[:, h] @ k[:, kv_of(h)].T) * D ** -0.5
                s = s.masked_fill(~allowed, float("-inf"))
                out.append(torch.cat([s, sinks[h].expand(T, 1)], 1).softmax(-1)[:, :-1])
            return torch.stack(out)  # [H, T, T]

        right = pattern_with(lambda h: h // G)
        assert torch.allclose(got, right, atol=1e-5), f"layer {i} pattern vs h // {G}: " + \
            max_diff_report(got, right)
        wrong = pattern_with(lambda h: h % K)
        assert (got - wrong).abs().max() > 1e-3, f"layer {i}: cannot tell h // {G} from h % {K}"
        # values are read through the same mapping: attn.hook_out = o_proj(sum_k p[h, q, k] v[k, h // G])
        mixed = torch.stack([got[h] @ v[:, h // G] for h in range(H)], dim=1)  # [T, H, D]
        out = model.blocks[i].attn.o_proj(mixed.reshape(T, H * D))
        assert torch.allclose(cache[f"blocks.{i}.attn.hook_out"], out, atol=1e-5), \
            f"layer {i} attention output: " + max_diff_report(cache[f"blocks.{i}.attn.hook_out"], out)


# ---------------------------------------------------------------------------------------------------------------
# Router and experts

def test_router_weights_are_softmax_over_top_k(model, run):
    _, _, cache = run
    k = model.config.num_experts_per_tok
    for i in range(model.config.num_hidden_layers):
        logits = cache[f"blocks.{i}.mlp.hook_router_logits"]  # [T, E]
        idx = cache[f"blocks.{i}.mlp.hook_expert_idx"]  # [T, k]
        w = cache[f"blocks.{i}.mlp.hook_expert_weight"]  # [T, k]
        sums = w.sum(-1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6), f"layer {i}: weights sum to {sums[:4]}"
        top = logits.topk(k, dim=-1)
        assert torch.equal(idx.sort(-1).values, top.indices.sort(-1).values), f"layer {i}: experts are not top-{k}"
        chosen = logits.gather(-1, idx)
        assert torch.allclose(w, chosen.softmax(-1), atol=1e-6), f"layer {i}: weights are not softmax(top-k): " + \
            max_diff_report(w, chosen.softmax(-1))
        # the softmax runs over the k chosen logits only, not over all E experts
        full = logits.softmax(-1).gather(-1, idx)
        assert (w - full).abs().max() > 1e-3, f"layer {i}: weights equal the full softmax; top-k not applied"
        # the router logits include the bias
        x = model.blocks[i].post_attention_layernorm(cache[f"blocks.{i}.hook_resid_pre"]
                                                     + cache[f"blocks.{i}.attn.hook_out"])
        r = model.blocks[i].mlp.router
        assert torch.allclose(logits, x @ r.weight.T + r.bias, atol=1e-5), f"layer {i}: router logits"


def test_moe_output_is_weighted_sum_of_chosen_experts(model, run):
    _, _, cache = run
    for i in range(model.config.num_hidden_layers):
        mlp = model.blocks[i].mlp
        x = model.blocks[i].post_attention_layernorm(cache[f"blocks.{i}.hook_resid_pre"]
                                                     + cache[f"blocks.{i}.attn.hook_out"])  # [T, d]
        idx = cache[f"blocks.{i}.mlp.hook_expert_idx"]
        w = cache[f"blocks.{i}.mlp.hook_expert_weight"]
        got = cache[f"blocks.{i}.mlp.hook_out"]
        for t in range(x.shape[0]):
            manual = sum(w[t, j] * mlp.experts.expert(int(idx[t, j]), x[t:t + 1])[0] for j in range(idx.shape[1]))
            assert torch.allclose(got[t], manual, atol=1e-5), f"layer {i} token {t}: MoE output " + \
                max_diff_report(got[t], manual)


def test_expert_follows_spec_formula(model, run):
    """Experts.expert = W2 (clamped SwiGLU of interleaved W1 x + b1) + b2, with W from the packed MXFP4 tensors."""
    _, _, cache = run
    cfg = model.config
    ex = model.blocks[0].mlp.experts
    assert ex.packed and ex.gate_up_proj_blocks.dtype == torch.uint8
    x = model.blocks[0].post_attention_layernorm(cache["blocks.0.hook_resid_pre"] + cache["blocks.0.attn.hook_out"])
    clamped = False
    for e in range(cfg.num_local_experts):
        w1 = mxfp4_dequant(ex.gate_up_proj_blocks[e], ex.gate_up_proj_scales[e], torch.float32)  # [2I, d]
        w2 = mxfp4_dequant(ex.down_proj_blocks[e], ex.down_proj_scales[e], torch.float32)  # [d, I]
        h = x @ w1.T + ex.gate_up_proj_bias[e]
        gate, up = h[:, 0::2], h[:, 1::2]
        clamped |= bool((gate > cfg.swiglu_limit).any() or (up.abs() > cfg.swiglu_limit).any())
        gate, up = gate.clamp(max=7.0), up.clamp(-7.0, 7.0)
        a = gate * torch.sigmoid(1.702 * gate) * (up + 1)
        y = a @ w2.T + ex.down_proj_bias[e]
        got = ex.expert(e, x)
        assert torch.allclose(got, y, atol=1e-4, rtol=1e-5), f"expert {e}: " + max_diff_report(got, y)
    assert clamped, "the clamp never triggers on this input, so the test cannot check it"
