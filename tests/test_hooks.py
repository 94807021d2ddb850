"""Hook points: the pinned ordered name list, shapes, firing order, name filters, interventions, clean-up.

The names and shapes are written out literally from DESIGN.md ("Hook names, per layer i"), so renaming, adding,
dropping or reordering a hook point fails here with the first position that differs.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TEXT, make_gpt2_dir, randomize, tiny_gptoss_config
from gptoss_viz import load_model
from gptoss_viz.runtime.gptoss import GptOss
from gptoss_viz.runtime.hooks import HookPoint

GPTOSS_LAYER_HOOKS = [
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_q_rot",
    "attn.hook_k_rot",
    "attn.hook_pattern",
    "attn.hook_sink_prob",
    "attn.hook_out",
    "mlp.hook_router_logits",
    "mlp.hook_expert_idx",
    "mlp.hook_expert_weight",
    "mlp.hook_out",
    "hook_resid_post",
]
GPT2_LAYER_HOOKS = [
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_out",
    "mlp.hook_pre",
    "mlp.hook_post",
    "mlp.hook_out",
    "hook_resid_post",
]


def expected_gptoss_names(n_layers: int) -> list[str]:
    return ["hook_embed"] + [f"blocks.{i}.{h}" for i in range(n_layers) for h in GPTOSS_LAYER_HOOKS]


def expected_gpt2_names(n_layers: int) -> list[str]:
    return ["hook_embed", "hook_pos_embed"] + [f"blocks.{i}.{h}" for i in range(n_layers) for h in GPT2_LAYER_HOOKS]


def gptoss_shapes(cfg, T: int) -> dict[str, tuple[int, ...]]:
    """DESIGN.md's table for gpt-oss, one sequence of T tokens."""
    d, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    E, k = cfg.num_local_experts, cfg.num_experts_per_tok
    per_layer = {
        "hook_resid_pre": (T, d), "hook_resid_post": (T, d),
        "attn.hook_q": (T, H, D), "attn.hook_k": (T, K, D), "attn.hook_v": (T, K, D),
        "attn.hook_q_rot": (T, H, D), "attn.hook_k_rot": (T, K, D),
        "attn.hook_pattern": (H, T, T), "attn.hook_sink_prob": (H, T), "attn.hook_out": (T, d),
        "mlp.hook_router_logits": (T, E), "mlp.hook_expert_idx": (T, k), "mlp.hook_expert_weight": (T, k),
        "mlp.hook_out": (T, d),
    }
    out = {"hook_embed": (T, d)}
    for i in range(cfg.num_hidden_layers):
        out.update({f"blocks.{i}.{h}": s for h, s in per_layer.items()})
    return out


def gpt2_shapes(cfg, T: int) -> dict[str, tuple[int, ...]]:
    d, H = cfg.n_embd, cfg.n_head
    D, F = d // H, 4 * d
    per_layer = {
        "hook_resid_pre": (T, d), "hook_resid_post": (T, d),
        "attn.hook_q": (T, H, D), "attn.hook_k": (T, H, D), "attn.hook_v": (T, H, D),
        "attn.hook_pattern": (H, T, T), "attn.hook_out": (T, d),
        "mlp.hook_pre": (T, F), "mlp.hook_post": (T, F), "mlp.hook_out": (T, d),
    }
    out = {"hook_embed": (T, d), "hook_pos_embed": (T, d)}
    for i in range(cfg.n_layer):
        out.update({f"blocks.{i}.{h}": s for h, s in per_layer.items()})
    return out


def assert_same_list(got: list[str], want: list[str], what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{what}: position {i} is {g!r}, expected {w!r}"
    assert len(got) == len(want), (f"{what}: {len(got)} names, expected {len(want)}; extra {got[len(want):][:3]}, "
                                   f"missing {want[len(got):][:3]}")


@pytest.fixture(scope="module")
def gptoss(gptoss_dir):
    return load_model(gptoss_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tokenizer_json):
    return load_model(make_gpt2_dir(tmp_path_factory.mktemp("gpt2h"), tokenizer_json, prefixed=False),
                      dtype=torch.float32)


@pytest.fixture(scope="module", params=["gpt_oss", "gpt2"])
def model(request, gptoss, gpt2):
    return gptoss if request.param == "gpt_oss" else gpt2


def ids_for(m, n_chars: int = 90) -> torch.Tensor:
    ids = torch.tensor(m.tokenizer.encode(TEXT[:n_chars]))
    return ids[: m.config.max_position_embeddings]


def expected_names(m) -> list[str]:
    if m.config.model_type == "gpt_oss":
        return expected_gptoss_names(m.config.num_hidden_layers)
    return expected_gpt2_names(m.config.n_layer)


def expected_shapes(m, T: int) -> dict[str, tuple[int, ...]]:
    return gptoss_shapes(m.config, T) if m.config.model_type == "gpt_oss" else gpt2_shapes(m.config, T)


def assert_no_hooks_left(m) -> None:
    left = [n for n in m.hook_names() if m.hook_point(n).active]
    assert not left, f"hooks still attached after the with block: {left[:5]}"


# ---------------------------------------------------------------------------------------------------------------

def test_gptoss_hook_names_pinned(gptoss):
    assert gptoss.config.num_hidden_layers == 4
    assert_same_list(gptoss.hook_names(), expected_gptoss_names(4), "gpt-oss hook_names()")


def test_gpt2_hook_names_pinned(gpt2):
    assert gpt2.config.n_layer == 3
    assert_same_list(gpt2.hook_names(), expected_gpt2_names(3), "GPT-2 hook_names()")


def test_cached_shapes_match_design(model):
    ids = ids_for(model)
    T = len(ids)
    _, cache = model.run_with_cache(ids)
    want = expected_shapes(model, T)
    assert sorted(cache) == sorted(want), f"cache keys differ: extra {set(cache) - set(want)}, " \
                                          f"missing {set(want) - set(cache)}"
    bad = [(n, tuple(cache[n].shape), s) for n, s in want.items() if tuple(cache[n].shape) != s]
    assert not bad, "shape differs from DESIGN.md (name, got, expected): " + "; ".join(map(str, bad[:6]))


def test_gptoss_index_hooks_are_integer(gptoss):
    _, cache = gptoss.run_with_cache(ids_for(gptoss), names_filter=r"blocks\.\d+\.mlp\.hook_expert_(idx|weight)")
    for n, t in cache.items():
        if n.endswith("idx"):
            assert not t.is_floating_point(), f"{n} is {t.dtype}; expected integer expert indices"
        else:
            assert t.is_floating_point(), f"{n} is {t.dtype}; expected float weights"


def test_hooks_fire_in_listed_order(model):
    fired: list[str] = []

    def record(x, hook):
        fired.append(hook.name)

    with model.hooks([(n, record) for n in model.hook_names()]):
        model(ids_for(model, 40))
    assert_same_list(fired, expected_names(model), "firing order")
    assert_no_hooks_left(model)


def test_names_filter_forms(gptoss):
    m = gptoss
    ids = ids_for(m, 40)
    _, all_ = m.run_with_cache(ids, names_filter=None)
    assert list(all_) == m.hook_names(), "names_filter=None must cache every hook, in order"

    wanted = ["blocks.1.attn.hook_sink_prob", "hook_embed"]
    _, c = m.run_with_cache(ids, names_filter=wanted)
    assert set(c) == set(wanted), f"list filter: got {sorted(c)}"

    _, c = m.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    assert sorted(c) == [f"blocks.{i}.attn.hook_pattern" for i in range(4)], f"predicate filter: got {sorted(c)}"

    _, c = m.run_with_cache(ids, names_filter=r"blocks\.[02]\.attn\.hook_(q|k)")
    assert sorted(c) == ["blocks.0.attn.hook_k", "blocks.0.attn.hook_q", "blocks.2.attn.hook_k",
                         "blocks.2.attn.hook_q"], f"regex filter: got {sorted(c)}"

    _, c = m.run_with_cache(ids, names_filter="blocks.3.mlp.hook_router_logits")
    assert list(c) == ["blocks.3.mlp.hook_router_logits"], f"single-name filter: got {list(c)}"

    for n in wanted:
        one = m.run_with_cache(ids, names_filter=[n])[1][n]
        assert torch.equal(one, all_[n]), f"{n}: value differs between filtered and unfiltered runs"


@pytest.mark.parametrize("bad", [["hook_embed", "blocks.9.attn.hook_q"], "blocks.0.attn.hook_nope",
                                 "blocks.[0", ["attn.hook_q"]], ids=["list", "string", "bad-regex", "partial"])
def test_unknown_names_raise_keyerror(gptoss, bad):
    with pytest.raises(KeyError) as e:
        gptoss.run_with_cache(ids_for(gptoss, 20), names_filter=bad)
    assert "hook" in str(e.value), f"KeyError message does not point to the hook names: {e.value}"
    assert_no_hooks_left(gptoss)


def test_unknown_name_in_hooks_detaches_earlier_ones(gptoss):
    with pytest.raises(KeyError, match="blocks.0.mlp.hook_nothing"):
        with gptoss.hooks([("hook_embed", lambda x, h: None), ("blocks.0.mlp.hook_nothing", lambda x, h: None)]):
            pass
    assert_no_hooks_left(gptoss)


def _rest_of_gptoss(m, x, start_layer, T):
    cos, sin = m.rope(T, x.device)
    for block in m.blocks[start_layer:]:
        x = block(x, cos, sin)
    return m.lm_head(m.norm(x))


def _rest_of_gpt2(m, x, start_layer):
    for block in m.blocks[start_layer:]:
        x = block(x)
    return torch.nn.functional.linear(m.ln_f(x), m.wte.weight)


@torch.no_grad()
def test_zeroing_mlp_out_changes_logits_as_computed_by_hand(model):
    m = model
    ids = ids_for(m, 60)
    T = len(ids)
    base, cache = m.run_with_cache(ids)
    with m.hooks([("blocks.0.mlp.hook_out", lambda x, hook: torch.zeros_like(x))]):
        ablated = m(ids)
    assert_no_hooks_left(m)
    change = (ablated - base).abs().max().item()
    assert change > 1e-2, f"zeroing blocks.0.mlp.hook_out changed the logits by only {change:.3g}"
    # by hand: without the MLP, layer 0's output is its input plus the attention output
    x = cache["blocks.0.hook_resid_pre"] + cache["blocks.0.attn.hook_out"]
    manual = _rest_of_gptoss(m, x, 1, T) if m.config.model_type == "gpt_oss" else _rest_of_gpt2(m, x, 1)
    diff = (ablated - manual).abs().max().item()
    assert diff < 1e-5, f"hooked ablation differs from the manual computation by {diff:.3g}"
    assert torch.equal(m(ids), base), "logits after the with block differ from before it: a hook stayed attached"


@torch.no_grad()
def test_hooks_removed_when_block_raises(model):
    ids = ids_for(model, 30)
    base = model(ids)
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("blocks.0.attn.hook_out", lambda x, hook: x * 0),
                          ("blocks.1.hook_resid_pre", lambda x, hook: None)]):
            assert model.hook_point("blocks.0.attn.hook_out").active
            raise RuntimeError("boom")
    assert_no_hooks_left(model)
    assert torch.equal(model(ids), base), "logits changed after a with block that raised: the hook stayed attached"


def test_wrong_shape_replacement_raises_clear_error(model):
    ids = ids_for(model, 30)
    T = len(ids)
    with pytest.raises(ValueError) as e:
        with model.hooks([("blocks.1.attn.hook_out", lambda x, hook: x[:-1])]):
            model(ids)
    msg = str(e.value)
    assert "blocks.1.attn.hook_out" in msg, f"error does not name the hook: {msg}"
    d = model.config.hidden_size if model.config.model_type == "gpt_oss" else model.config.n_embd
    assert str((T - 1, d)) in msg and str((T, d)) in msg, f"error does not give both shapes: {msg}"
    assert_no_hooks_left(model)


def test_non_tensor_replacement_raises(gptoss):
    with pytest.raises(ValueError, match="hook_embed"):
        with gptoss.hooks([("hook_embed", lambda x, hook: 0.0)]):
            gptoss(ids_for(gptoss, 20))
    assert_no_hooks_left(gptoss)


def test_unhooked_hookpoint_is_identity_on_the_same_object(gptoss):
    hp = HookPoint("[T, d]")
    x = torch.randn(3, 4)
    assert hp(x) is x, "a HookPoint without hooks must return its input object unchanged"
    hp_model = gptoss.hook_point("blocks.2.attn.hook_pattern")
    assert not hp_model.active
    y = torch.randn(4, 5, 5)
    assert hp_model(y) is y, "a model's HookPoint without hooks must return its input object unchanged"

    seen = []
    with gptoss.hooks([("blocks.2.attn.hook_pattern", lambda t, hook: seen.append(hook.name))]):
        assert hp_model.active
        assert hp_model(y) is y, "an observing hook (returning None) must not replace the tensor"
    assert seen == ["blocks.2.attn.hook_pattern"], f"hook saw {seen}"
    assert not hp_model.active


def test_observed_only_needs_every_hook_marked_an_observer():
    """HookPoint.observed_only (the fast path may keep what it computed from the tensor): true with no hook or only
    hooks marked by hooks.observer; false with any other hook function, or any torch module hook."""
    from gptoss_viz.runtime.hooks import observer

    hp = HookPoint("[T, E]")
    assert hp.observed_only
    seen = []
    watch = observer(lambda t, hook: seen.append(t.shape))
    assert watch.observes
    hp._fns.append(watch)
    assert hp.observed_only and hp.active and not hp.idle
    hp._fns.append(lambda t, hook: None)  # unmarked: it might write in place
    assert not hp.observed_only
    hp._fns.pop()
    handle = hp.register_forward_hook(lambda mod, args, out: None)
    try:
        assert not hp.observed_only
    finally:
        handle.remove()
    assert hp.observed_only
    x = torch.randn(2, 3)
    assert hp(x) is x and seen == [x.shape]


def test_torch_module_hooks_on_a_hookpoint_still_run():
    """An unhooked HookPoint skips nn.Module's call machinery; torch's own hooks, on the module or global, still
    run (they need that machinery), and so do ours alongside them."""
    hp = HookPoint("[T, d]")
    x = torch.randn(3, 4)
    handle = hp.register_forward_hook(lambda mod, args, out: out * 2)
    try:
        assert torch.equal(hp(x), 2 * x)
        hp._fns.append(lambda t, hook: t + 1)
        assert torch.equal(hp(x), 2 * (x + 1))
        hp._fns.clear()
    finally:
        handle.remove()
    assert hp(x) is x
    pre = hp.register_forward_pre_hook(lambda mod, args: (args[0] - 1,))
    try:
        assert torch.equal(hp(x), x - 1)
    finally:
        pre.remove()
    seen = []
    glob = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append(type(mod)))
    try:
        hp(x)
    finally:
        glob.remove()
    assert seen == [HookPoint]
    assert hp(x) is x


def test_run_with_cache_returns_detached_tensors():
    """On a model whose parameters require grad (as in training), cached tensors and logits carry no graph."""
    m = randomize(GptOss(tiny_gptoss_config(quant_method=None), packed=False), seed=5)
    assert any(p.requires_grad for p in m.parameters())
    ids = torch.arange(2, 22)
    logits, cache = m.run_with_cache(ids)
    attached = [n for n, t in cache.items() if t.requires_grad or t.grad_fn is not None]
    assert not attached, f"cached tensors still attached to the autograd graph: {attached[:5]}"
    assert not logits.requires_grad, "run_with_cache logits require grad"
    # outside run_with_cache the model still builds a graph (so the detach above is run_with_cache's doing)
    assert m(ids).requires_grad


def test_sink_prob_hook_is_observation_only(gptoss_dir):
    """Replacing the sink probability would silently do nothing (the sink has no value vector): refuse it."""
    m = load_model(gptoss_dir, dtype=torch.float32)
    ids = torch.tensor(m.tokenizer.encode("attention sinks"))
    with pytest.raises(ValueError, match="observation-only"):
        with m.hooks([("blocks.0.attn.hook_sink_prob", lambda x, h: torch.zeros_like(x))]):
            m(ids)


def test_deferred_input_check_runs_before_any_hook_function_and_at_the_forward_end(gptoss):
    """hooks.defer_check (how the GPU path checks token ids without a wait at the forward's start): a failing
    check raises before the first hook function sees an activation, or at the forward's end where none runs, and
    is gone afterwards; a passing one lets the forward run as usual."""
    from gptoss_viz.errors import InputError
    from gptoss_viz.runtime.hooks import defer_check

    ids = ids_for(gptoss, 20)

    def reject():
        raise InputError("rejected by the deferred check")

    seen = []
    for hooks in ([("hook_embed", lambda x, hook: seen.append(hook.name))],
                  [("blocks.1.mlp.hook_out", lambda x, hook: seen.append(hook.name))], []):
        defer_check(reject)
        with pytest.raises(InputError, match="rejected by the deferred check"):
            with gptoss.hooks(hooks):
                gptoss(ids)
        assert not seen, f"{seen} ran before the deferred check"
    ran = []
    defer_check(lambda: ran.append(1))
    with gptoss.hooks([("blocks.1.mlp.hook_out", lambda x, hook: seen.append(hook.name))]):
        logits = gptoss(ids)
    assert ran == [1] and seen == ["blocks.1.mlp.hook_out"], (ran, seen)
    assert torch.equal(gptoss(ids), logits), "nothing left over changes the next forward"
    assert_no_hooks_left(gptoss)


def test_forward_that_fails_drops_its_deferred_checks(gptoss):
    """A forward that ends with another error leaves no deferred check behind for the next one."""
    from gptoss_viz.runtime.hooks import defer_check

    ids = ids_for(gptoss, 20)
    defer_check(lambda: (_ for _ in ()).throw(AssertionError("a stale check ran")))

    def boom(module, args, out):
        raise RuntimeError("boom")

    handle = gptoss.blocks[1].mlp.register_forward_hook(boom)  # (a torch hook, not a hook point: no check runs)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            gptoss(ids)
    finally:
        handle.remove()
    gptoss(ids)  # nothing stale raises
