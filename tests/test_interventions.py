"""Interventions: what they must leave untouched stays bit-identical; what they change, changes as stated."""

from __future__ import annotations

import pytest
import torch

from gptoss_viz import InputError, load_model
from gptoss_viz.interventions import Intervention, compare
from gptoss_viz.runtime.checkpoints import REPO_ROOT
from gptoss_viz.trace import run_trace

TEXT = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")[:1400]


@pytest.fixture(scope="module")
def model():
    return load_model("gpt-oss-nano", dtype=torch.float32)


@pytest.fixture(scope="module")
def ids(model):
    ids = torch.tensor(model.tokenizer.encode(TEXT))
    assert len(ids) > 2 * model.config.sliding_window
    return ids


def run(model, ids, iv: Intervention, names):
    got = {}
    grab = lambda x, h: got.__setitem__(h.name, x.detach().clone())  # noqa: E731
    with torch.no_grad(), model.hooks(iv.hooks(model, len(ids)) + [(n, grab) for n in names]):
        logits = model(ids, **iv.forward_kwargs(len(ids)))
    return logits, got


def test_noop_reproduces_the_original_exactly(model, ids):
    base = model(ids)
    logits, _ = run(model, ids, Intervention(), [])
    assert torch.equal(base, logits)
    assert compare(model, ids, Intervention()).max_logit_diff == 0.0
    a, b = run_trace(model, TEXT), run_trace(model, TEXT, intervention=Intervention())
    assert (a.top_probs == b.top_probs).all() and (a.sink_prob == b.sink_prob).all()


@pytest.mark.parametrize("layer", [1, 2])
def test_ablated_expert_changes_nothing_for_tokens_not_routed_to_it(model, ids, layer):
    L = model.config.num_hidden_layers
    names = [f"blocks.{i}.hook_resid_post" for i in range(L)] + [f"blocks.{layer}.mlp.hook_expert_idx"]
    base_logits, base = run(model, ids, Intervention(), names)
    routed = base[f"blocks.{layer}.mlp.hook_expert_idx"]  # [T, k]
    e = int(torch.bincount(routed.flatten()).argmax())  # a busy expert
    hit = (routed == e).any(-1)  # tokens routed to e in that layer
    assert hit.any() and (~hit).any()
    logits, new = run(model, ids, Intervention(ablate=((layer, e),)), names)
    for i in range(layer):  # earlier layers: untouched everywhere
        assert torch.equal(new[f"blocks.{i}.hook_resid_post"], base[f"blocks.{i}.hook_resid_post"])
    r_new, r_base = new[f"blocks.{layer}.hook_resid_post"], base[f"blocks.{layer}.hook_resid_post"]
    # Same maths for the other tokens; only float rounding may differ: rerouted tokens change the row count of
    # other experts' matrix products, and the CPU GEMM's blocking (so its summation order) depends on it.
    unchanged = (r_new[~hit] - r_base[~hit]).abs().max().item()
    changed = (r_new[hit] - r_base[hit]).abs().max().item()
    assert unchanged <= 1e-5, f"tokens never routed to expert {e} moved by {unchanged:.3g} in layer {layer}"
    assert changed > 1e-2, f"the ablation barely changed the routed tokens ({changed:.3g})"
    assert e not in new[f"blocks.{layer}.mlp.hook_expert_idx"]
    first = int(hit.nonzero()[0])  # causal: positions before the first routed token cannot change
    assert (logits[:first] - base_logits[:first]).abs().max() <= 1e-4


def test_removing_sinks_makes_rows_sum_to_one(model, ids):
    L = model.config.num_hidden_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(L)]
    _, base = run(model, ids, Intervention(), names)
    _, new = run(model, ids, Intervention(remove_sinks=((None, None),)), names)
    for n in names:
        assert base[n].sum(-1).min() < 0.99  # the sinks did take mass
        torch.testing.assert_close(new[n].sum(-1), torch.ones_like(new[n].sum(-1)), atol=1e-5, rtol=0)
    tr = run_trace(model, TEXT, intervention=Intervention(remove_sinks=((1, 3),)))
    assert (tr.sink_prob[1, 3] == 0).all() and tr.sink_prob[1, 2].max() > 0
    p, sink = tr.head_pattern(1, 3)
    assert abs(p.sum(-1) - 1).max() < 1e-5 and (sink == 0).all()


def test_full_width_window_equals_full_attention(model, ids):
    T = len(ids)
    full_logits, _ = run(model, ids, Intervention(all_full=True), [])
    wide_logits, _ = run(model, ids, Intervention(window=10 * T), [])
    assert torch.equal(full_logits, wide_logits)
    ref = load_model("gpt-oss-nano", dtype=torch.float32)
    for block in ref.blocks:  # the same weights with every layer declared full
        block.attn.window = None
    with torch.no_grad():
        assert torch.equal(ref(ids), full_logits)
        assert not torch.equal(model(ids), full_logits)  # and it is a change: the text exceeds the window


def test_narrow_window_confines_attention(model, ids):
    _, got = run(model, ids, Intervention(window=16), ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    p0 = got["blocks.0.attn.hook_pattern"]  # sliding layer: nothing 16 or more back
    T = p0.shape[-1]
    far = torch.ones(T, T, dtype=torch.bool).tril(-16)
    assert p0[:, far].abs().max() == 0
    assert got["blocks.1.attn.hook_pattern"][:, far].max() > 0  # the full layer is unaffected by the window


def test_force_and_plain_rope(model, ids):
    k = model.config.num_experts_per_tok
    forced = tuple(range(k))
    t = 40
    iv = Intervention(force=(t, 2, forced))
    names = ["blocks.2.mlp.hook_expert_idx", "blocks.2.mlp.hook_expert_weight", "blocks.2.mlp.hook_router_logits"]
    base_logits, _ = run(model, ids, Intervention(), [])
    logits, got = run(model, ids, iv, names)
    assert tuple(got[names[0]][t].tolist()) == forced
    torch.testing.assert_close(got[names[1]][t], got[names[2]][t, list(forced)].softmax(-1))
    assert torch.equal(logits[:t], base_logits[:t]) and not torch.equal(logits[t], base_logits[t])
    c = compare(model, ids, Intervention(plain_rope=True))
    assert c.kl > 0 and c.max_logit_diff > 0


def test_text_form_and_bad_input(model, ids):
    iv = Intervention(ablate=((None, 3), (1, 5)), force=(-1, None, (1, 2, 3, 4)), remove_sinks=((2, None),),
                      window=64, plain_rope=True)
    assert Intervention.from_str(iv.to_str()) == iv
    for bad in ["ax=1", "fx=1:2", "w=abc", "zz=1", "rs=1:2:3", "x" * 3000]:
        with pytest.raises(InputError):
            Intervention.from_str(bad)
    for bad in [Intervention(ablate=((9, 0),)), Intervention(ablate=((0, 99),)), Intervention(window=0),
                Intervention(force=(0, 0, (1, 2))), Intervention(force=(10_000, 0, (0, 1, 2, 3))),
                Intervention(remove_sinks=((0, 64),))]:
        with pytest.raises(InputError):
            bad.validate(model.config, len(ids))


def test_out_of_memory_in_the_tab_gives_a_message(monkeypatch):
    gr = pytest.importorskip("gradio")
    import gptoss_viz.ui.interventions_tab as tab

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with gr.Blocks():
        state = gr.State()
        layer, head, token = gr.Number(1), gr.Number(0), gr.Number(-1)
        iv = tab.interventions_tab(state, layer, head, token)
    monkeypatch.setattr(tab, "apply", oom)
    out = iv["apply"]({"traces": {}}, "ax=1:0", 1, 0, -1)
    assert "out of memory" in out[0] and "shorter prompt" in out[0]
    assert len(out) == len(iv["outputs"])
