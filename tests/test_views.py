"""Trace, analysis and figures: invariants of the reduced numbers, head patterns recomputed through the model's
own attention function, payload sizes, edge-case prompt lengths, and escaping of token text."""

from __future__ import annotations

import json

import numpy as np
import plotly.io as pio
import pytest
import torch

from conftest import TEXT, make_gpt2_dir
from gptoss_viz import InputError, load_model
from gptoss_viz.analysis import overview, routing, sinks, windows
from gptoss_viz.figures import views
from gptoss_viz.runtime.checkpoints import REPO_ROOT
from gptoss_viz.runtime.configs import GptOssConfig, RopeScaling
from gptoss_viz.trace import host_bytes, run_trace

SLICE = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def nano():
    return load_model("gpt-oss-nano", dtype=torch.float32), load_model("gpt2-nano", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny(gptoss_dir, tmp_path_factory, tokenizer_json):
    g = make_gpt2_dir(tmp_path_factory.mktemp("g2v"), tokenizer_json, prefixed=False)
    return load_model(gptoss_dir, dtype=torch.float32), load_model(g, dtype=torch.float32)


@pytest.fixture(scope="module")
def traces(nano):
    oss, gpt2 = nano
    text = SLICE[:1900]
    return run_trace(oss, text), run_trace(gpt2, text)


def test_invariants_on_tiny_random_models(tiny):
    oss, gpt2 = tiny
    text = TEXT[:150]
    a, b = run_trace(oss, text), run_trace(gpt2, text[:60])
    k = oss.config.num_experts_per_tok
    assert (routing.expert_load(a).sum(1) == a.T * k).all(), "each layer's expert loads must sum to T x k"
    assert ((a.sink_prob >= 0) & (a.sink_prob <= 1)).all()
    assert a.T > 2 * oss.config.sliding_window  # so that the window matters
    beyond = windows.mass_beyond(a, oss.config.sliding_window)
    for i, t in enumerate(oss.config.layer_types):
        if t == "sliding_attention":
            assert (beyond[i] == 0).all(), f"layer {i} (sliding) attends beyond its window: {beyond[i].max()}"
    assert beyond[[i for i, t in enumerate(oss.config.layer_types) if t == "full_attention"]].max() > 1e-3
    # every query's mass: real keys + sink = 1
    total = a.distance_mass.sum(-1) + sinks.sink_mass(a)
    np.testing.assert_allclose(total, 1.0, atol=1e-5, err_msg="distance mass + sink mass must be 1 per query")
    np.testing.assert_allclose(b.distance_mass.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["gpt-oss", "gpt2"])
def test_head_pattern_equals_hooked_pattern(tiny, which):
    model = tiny[which]
    text = TEXT[:60]
    tr = run_trace(model, text)
    _, cache = model.run_with_cache(torch.tensor(tr.ids), names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(tr.n_layers):
        for head in (0, tr.n_heads - 1):
            p, sink = tr.head_pattern(layer, head)
            hooked = cache[f"blocks.{layer}.attn.hook_pattern"][head].numpy()
            np.testing.assert_allclose(p, hooked, atol=1e-6, err_msg=f"layer {layer} head {head}")
            if sink is not None:
                np.testing.assert_allclose(sink, tr.sink_prob[layer, head], atol=1e-6)


def test_head_pattern_by_rerun_equals_kept(tiny):
    """When q/k are too big to keep, the pattern is recomputed by re-running the layer's hooks: same numbers."""
    model = tiny[0]
    tr = run_trace(model, TEXT[:80])
    kept = tr.head_pattern(1, 2)
    tr._qk = None
    rerun = tr.head_pattern(1, 2)
    np.testing.assert_allclose(kept[0], rerun[0], atol=1e-6)


def test_nano_invariants_and_contrast(traces):
    a, b = traces
    assert ((sinks.sink_mass(a) >= 0) & (sinks.sink_mass(a) <= 1)).all()
    assert (routing.expert_load(a).sum(1) == a.T * 4).all()
    beyond = windows.mass_beyond(a, 128)
    assert beyond[0].max() == 0 and beyond[2].max() == 0  # sliding layers
    assert a.top_probs.shape == (a.T, 5) and np.all(np.diff(a.top_probs, axis=1) <= 0)
    assert overview.predictions(a)[0][0] == a.top_tokens[-1][0]
    np.testing.assert_allclose(a.expert_weight.sum(-1), 1.0, atol=1e-5)


def test_trace_host_size_bounded():
    """host_bytes is exact on real traces (checked below); gpt-oss-20b at 4096 tokens stays under 200 MB."""
    cfg20 = GptOssConfig(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
                         num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                         num_experts_per_tok=4, sliding_window=128,
                         layer_types=("sliding_attention", "full_attention") * 12, max_position_embeddings=131072,
                         rope_scaling=RopeScaling(), quant_method="mxfp4")
    assert host_bytes(cfg20, 4096) < 200e6, f"{host_bytes(cfg20, 4096) / 1e6:.0f} MB"


def test_host_bytes_matches_real_traces(traces):
    for tr in traces:
        assert tr.nbytes_host() == host_bytes(tr.config, tr.T)


def test_figures_payload_under_5mb_at_1024_tokens(nano):
    oss, gpt2 = nano
    text = oss.tokenizer.decode(oss.tokenizer.encode(SLICE)[:1024])
    a = run_trace(oss, text)
    assert a.T >= 1000
    figs = views.build_all(a, None, views.Selection(layer=1, head=3, token=500))
    size = sum(len(v) if isinstance(v, str) else len(pio.to_json(v)) for tab in figs.values() for v in tab.values())
    assert size < 5e6, f"figures for a {a.T}-token prompt are {size / 1e6:.1f} MB of JSON"


@pytest.mark.parametrize("length", ["one", "max"])
def test_figures_build_at_edge_lengths(nano, length):
    oss, gpt2 = nano
    if length == "one":
        text = "x"
    else:  # gpt2-nano's longest input: 512 positions
        ids = gpt2.tokenizer.encode(SLICE)[: gpt2.config.n_positions]
        text = gpt2.tokenizer.decode(ids)
    a, b = run_trace(oss, text), run_trace(gpt2, text)
    if length == "one":
        assert a.T == 1 and b.T == 1
    else:
        assert b.T == gpt2.config.n_positions
    figs = views.build_all(a, b, views.Selection(layer=99, head=99, token=10_000))  # out of range: clamped
    for tab, items in figs.items():
        for name, fig in items.items():
            if not isinstance(fig, str):
                assert json.loads(pio.to_json(fig))["data"] is not None, f"{tab}/{name} did not serialise"


def test_over_long_and_empty_prompts_are_refused(nano):
    oss, gpt2 = nano
    with pytest.raises(InputError, match="empty"):
        run_trace(gpt2, "   \n")
    with pytest.raises(InputError, match="at most 512"):
        run_trace(gpt2, SLICE)  # ~4,600 tokens > 512 positions
    with pytest.raises(InputError, match="at most 100"):
        run_trace(oss, SLICE, max_tokens=100)
    with pytest.raises(InputError, match="harmony"):
        run_trace(gpt2, "hi", chat=True)


def test_chat_mode_renders_harmony(nano):
    oss, gpt2 = nano
    tr = run_trace(oss, "What is a sink?", chat=True)
    assert tr.text.startswith("<|start|>system<|message|>") and tr.text.endswith("<|start|>assistant")
    assert "<|end|>" in tr.tokens
    figs = views.build("overview", tr, run_trace(gpt2, "What is a sink?"), views.Selection())
    assert "tokens" in figs  # chat vs raw text cannot be aligned: shown as two rows instead
    title = figs["predictions"].layout.title.text  # each model's bars follow its own last token
    assert f"gpt-oss after \u201c{tr.tokens[-1]}\u201d" in title and "GPT-2 after \u201c?\u201d" in title, title


def test_token_text_is_escaped_everywhere(nano):
    oss, gpt2 = nano
    evil = 'Hi <script>alert("x")</script> & <b>bold</b>'
    a, b = run_trace(oss, evil), run_trace(gpt2, evil)
    figs = views.build_all(a, b, views.Selection())
    for tab, items in figs.items():
        for name, fig in items.items():
            payload = fig if isinstance(fig, str) else pio.to_json(fig)
            assert "<script" not in payload and "<b>bold" not in payload, f"{tab}/{name} carries raw HTML"


def test_token_labels_show_whitespace():
    from gptoss_viz.figures._base import label

    assert label(" cat") == "\u2423cat"  # a token's leading space is part of it
    assert label("  ") == "\u2423\u2423"
    assert label("a b") == "a b"  # inner spaces stay spaces
    assert label("\n") == "\\n" and label("x\ty") == "x\\ty"
    assert label("<b>") == "&lt;b&gt;"
