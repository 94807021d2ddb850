"""Every view of the explainer for one prompt: gpt-oss and GPT-2 traces + the user's selection -> figures.

The UI places these and never computes anything itself. Each view comes with a plain-language caption.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptoss_viz.analysis import overview, positions, routing, sinks, windows
from gptoss_viz.figures import overview as f_over
from gptoss_viz.figures import positions as f_pos
from gptoss_viz.figures import routing as f_route
from gptoss_viz.figures import sinks as f_sinks
from gptoss_viz.figures import windows as f_win
from gptoss_viz.figures._base import GPT2_COLOR, empty

TABS = ("overview", "routing", "sinks", "window", "rope")

CAPTIONS = {
    "overview": (
        "The prompt as each model's tokenizer cuts it, and what each model expects next. The table lists the seven "
        "changes from GPT-2 (2019) to gpt-oss (2025) with numbers read from the two loaded models' configurations: "
        "the other tabs show each change at work on this prompt."),
    "routing": (
        "gpt-oss replaces GPT-2's one feed-forward network per layer with many experts, and a router sends each "
        "token to only a few of them (top-k), so most parameters sit idle for any one token. The grid colours each "
        "token by its most-weighted expert in every layer; the load shows whether the router spreads work evenly; "
        "a small margin means the token nearly went elsewhere. GPT-2, by contrast, runs every neuron of its MLP "
        "for every token."),
    "sinks": (
        "Softmax attention must put its probability somewhere, even when a head has nothing useful to look at. "
        "GPT-2 learns to dump it on the first token (an emergent 'attention sink'); gpt-oss gives each head a "
        "learned sink logit, an extra column in the softmax with no value vector, so parked probability simply "
        "disappears. Both panels use the same 0-1 scale: gpt-oss's learned sink mass next to GPT-2's first-token "
        "mass."),
    "window": (
        "Every other gpt-oss layer attends only to the last 128 tokens (the query included), which bounds its "
        "cost and its KV cache; the layers between see everything. The masks show which keys each query may "
        "read; the pattern shows where one real head looks, with the window's edge; the distance profile shows "
        "how far back attention goes in each layer, and how much the full layers reach beyond 128 tokens. GPT-2 "
        "attends fully in every layer."),
    "rope": (
        "GPT-2 adds a learned vector per absolute position to each token. gpt-oss instead rotates pairs of query "
        "and key dimensions by an angle proportional to the position (RoPE), so attention scores depend on "
        "relative distance. Fast-turning pairs resolve nearby order, slow ones long range; YaRN keeps the fast "
        "pairs and slows the slow ones by 32x to stretch the context from 4k to 131k tokens, and scales cos/sin "
        "by its concentration factor. The score-by-distance plot uses the chosen head's real queries and keys."),
}


@dataclass
class Selection:
    layer: int = 1  # layer 1 is a full-attention layer in gpt-oss
    head: int = 0
    token: int = -1  # -1 = the last token
    pair: int | None = None  # RoPE pair; None = the middle of the YaRN ramp

    def clamp(self, tr) -> "Selection":
        """The selection made valid for a trace (out-of-range values fall back to the nearest valid one)."""
        return Selection(layer=min(max(self.layer, 0), tr.n_layers - 1), head=min(max(self.head, 0), tr.n_heads - 1),
                         token=self.token % tr.T if -tr.T <= self.token < tr.T else tr.T - 1, pair=self.pair)


def gpt2_counterpart(sel: Selection, oss_layers: int, tr2) -> Selection:
    """The GPT-2 layer at the same relative depth and the same head index (clamped)."""
    layer = round(sel.layer * (tr2.n_layers - 1) / max(1, oss_layers - 1))
    return Selection(layer=layer, head=sel.head, token=sel.token, pair=sel.pair).clamp(tr2)


def build(tab: str, oss, gpt2, sel: Selection) -> dict:
    """Figures (and HTML) of one tab. `oss` or `gpt2` may be None when that model is not loaded."""
    if tab not in TABS:
        raise ValueError(f"unknown tab {tab!r}; tabs are {', '.join(TABS)}")
    return globals()[f"_{tab}"](oss, gpt2, sel)


def build_all(oss, gpt2, sel: Selection) -> dict:
    return {tab: build(tab, oss, gpt2, sel) for tab in TABS}


def _overview(oss, gpt2, sel):
    out = {}
    if oss is not None and gpt2 is not None:
        try:
            groups = overview.align_tokens(oss, gpt2)
            out["tokens"] = f_over.token_strip_html(oss.tokens, groups, gpt2.tokens)
        except ValueError:  # chat mode: gpt-oss read a rendered conversation, GPT-2 the raw text
            out["tokens"] = f_over.token_strip_html(oss.tokens) + f_over.token_strip_html(
                gpt2.tokens, names=("GPT-2", ""))
        out["card"] = f_over.architecture_card_html(overview.architecture_rows(oss.config, gpt2.config))
    else:
        tr = oss or gpt2
        out["tokens"] = f_over.token_strip_html(tr.tokens, names=("gpt-oss" if oss else "GPT-2", ""))
        out["card"] = ""
    out["predictions"] = f_over.predictions_figure(overview.predictions(oss) if oss else None,
                                                   overview.predictions(gpt2) if gpt2 else None,
                                                   oss.tokens[-1] if oss else None, gpt2.tokens[-1] if gpt2 else None)
    return out


def _routing(oss, gpt2, sel):
    out = {}
    if oss is not None:
        s = sel.clamp(oss)
        out["grid"] = f_route.top1_grid(routing.top1(oss), oss.expert_idx, oss.expert_weight, oss.tokens)
        out["load"] = f_route.load_heatmap(routing.expert_load(oss), oss.expert_idx.shape[-1])
        out["confidence"] = f_route.confidence_heatmap(routing.topk_margin(oss), routing.router_entropy(oss),
                                                       oss.tokens)
        out["path"] = f_route.token_path_sankey(routing.token_path(oss, s.token), oss.tokens[s.token])
        out["coactivation"] = f_route.coactivation_heatmap(routing.coactivation(oss, s.layer), s.layer)
    else:
        out["grid"] = empty("Expert routing", "Load a gpt-oss model to see expert routing.")
    out["gpt2_mlp"] = (f_route.mlp_activity_heatmap(routing.mlp_activity(gpt2), gpt2.tokens) if gpt2 is not None
                       else empty("GPT-2 MLP", "No GPT-2 model loaded."))
    return out


def _sinks(oss, gpt2, sel):
    out = {}
    if oss is not None:
        s = sel.clamp(oss)
        out["mass"] = f_sinks.mass_heatmap(sinks.sink_mass(oss), "gpt-oss: mean mass parked on the learned sink",
                                           "sink mass")
        out["per_token"] = f_sinks.per_token_line(sinks.sink_per_token(oss, s.layer, s.head), oss.tokens, s.layer,
                                                  s.head)
        out["logits"] = f_sinks.learned_logits(sinks.learned_sinks(oss))
    out["gpt2_mass"] = (f_sinks.mass_heatmap(sinks.first_token_mass(gpt2),
                                             "GPT-2: mean attention on the first token (emergent sink)",
                                             "first-token mass")
                        if gpt2 is not None else empty("GPT-2 sinks", "No GPT-2 model loaded."))
    return out


def _window(oss, gpt2, sel):
    out = {}
    if oss is not None:
        s = sel.clamp(oss)
        cfg = oss.config
        sliding = next((i for i, t in enumerate(cfg.layer_types) if t == "sliding_attention"), 0)
        full = next((i for i, t in enumerate(cfg.layer_types) if t == "full_attention"), 0)
        out["masks"] = f_win.masks_figure(windows.mask(cfg, sliding, oss.T), windows.mask(cfg, full, oss.T),
                                          cfg.sliding_window)
        pattern, _ = oss.head_pattern(s.layer, s.head)
        w = windows.layer_window(cfg, s.layer)
        kind = "sliding" if w else "full"
        out["pattern"] = f_win.pattern_figure(pattern, oss.tokens, f"gpt-oss layer {s.layer} ({kind}) head {s.head}",
                                              w)
        edges, mass = windows.distance_profile(oss)
        out["distance"] = f_win.distance_heatmap(edges, mass, cfg.sliding_window,
                                                 "gpt-oss: where attention goes, by distance")
        out["beyond"] = f_win.beyond_heatmap(windows.mass_beyond(oss, cfg.sliding_window),
                                             f"gpt-oss: attention mass \u2265 {cfg.sliding_window} tokens back",
                                             list(cfg.layer_types),
                                             f"all zero: this prompt has only {oss.T} tokens, so no key is "
                                             f"{cfg.sliding_window} back" if oss.T <= cfg.sliding_window else None)
    if gpt2 is not None:
        s2 = gpt2_counterpart(sel, oss.n_layers if oss else gpt2.n_layers, gpt2)
        pattern, _ = gpt2.head_pattern(s2.layer, s2.head)
        out["gpt2_pattern"] = f_win.pattern_figure(pattern, gpt2.tokens,
                                                   f"GPT-2 layer {s2.layer} head {s2.head} (full causal)", None)
        edges, mass = windows.distance_profile(gpt2)
        out["gpt2_distance"] = f_win.distance_heatmap(edges, mass, 128, "GPT-2: where attention goes, by distance")
    return out


def _rope(oss, gpt2, sel):
    out = {}
    if oss is not None:
        s = sel.clamp(oss)
        f = positions.frequencies(oss.config)
        pair = s.pair if s.pair is not None else int(round((f.get("low", 0) + f.get("high", 0)) / 2))
        pair = min(max(pair, 0), oss.config.head_dim // 2 - 1)
        out["frequencies"] = f_pos.frequency_figure(f)
        out["angle"] = f_pos.angle_figure(positions.rotation_angle(oss.config, pair, max(oss.T, 256)), pair)
        out["score"] = f_pos.score_by_distance(positions.qk_by_distance(oss, s.layer, s.head), s.layer, s.head)
    if gpt2 is not None:
        out["gpt2_positions"] = f_pos.position_similarity(gpt2.pos_similarity)
        s2 = gpt2_counterpart(sel, oss.n_layers if oss else gpt2.n_layers, gpt2)
        out["gpt2_score"] = f_pos.score_by_distance(positions.qk_by_distance(gpt2, s2.layer, s2.head), s2.layer,
                                                    s2.head, GPT2_COLOR, "GPT-2")
    return out
