"""The Interventions tab: change gpt-oss (ablate or force experts, remove sinks, change the window, plain RoPE)
and see, next to the original, the next-token distribution, the residual stream and the targeted view."""

from __future__ import annotations

import html

import gradio as gr
import torch

from gptoss_viz.errors import GptOssVizError
from gptoss_viz.figures import interventions as f_iv
from gptoss_viz.figures import views
from gptoss_viz.interventions import Intervention, compare
from gptoss_viz.trace import run_trace
from gptoss_viz.ui.layout import plot_row

CAPTION = (
    "Poke the model and watch the effect. Every change runs through the runtime's public API (hooks that replace "
    "a tensor, or the forward pass's window and RoPE options), on the prompt analysed above. Ablating an expert "
    "removes it from the router's choice, so its tokens go to the next-best expert; forcing sends one token to "
    "the experts you name; removing a sink renormalises that head's attention over the real tokens; the window "
    "and RoPE options change the sliding layers and the position encoding.")
KINDS = ["ablate an expert", "force a token's experts", "remove sinks", "change the sliding window",
         "make every layer full", "plain RoPE instead of YaRN"]
TARGET_SLOT = {"routing": "load", "sinks": "mass", "window": "pattern", "rope": "score", "overview": "predictions"}


def _target(v: str):
    return None if v in ("all", "", None) else int(v)


def build_intervention(kind, layer, head, expert, token, experts, window) -> Intervention:
    """The controls' values -> an Intervention (clear errors for unreadable values)."""
    try:
        if kind == KINDS[0]:
            return Intervention(ablate=((_target(layer), int(expert)),))
        if kind == KINDS[1]:
            chosen = tuple(int(x) for x in str(experts).replace(" ", "").split(",") if x)
            return Intervention(force=(int(token), _target(layer), chosen))
        if kind == KINDS[2]:
            return Intervention(remove_sinks=((_target(layer), _target(head)),))
        if kind == KINDS[3]:
            return Intervention(window=int(window))
        if kind == KINDS[4]:
            return Intervention(all_full=True)
        if kind == KINDS[5]:
            return Intervention(plain_rope=True)
    except (TypeError, ValueError):
        raise GptOssVizError("the intervention's numbers could not be read") from None
    raise GptOssVizError(f"unknown intervention {str(kind)[:40]!r}")


def apply(state: dict, iv: Intervention, sel: views.Selection):
    """Run the intervention on the analysed gpt-oss trace -> (comparison, trace after, figures)."""
    if not state or state.get("traces", {}).get("oss") is None:
        raise GptOssVizError("analyse a prompt with a gpt-oss model first")
    before = state["traces"]["oss"]
    model = before._model
    ids = torch.as_tensor(before.ids, device=next(model.parameters()).device)
    iv.validate(model.config, before.T)
    comp = compare(model, ids, iv, position=sel.token)
    view = state["view"]
    after = run_trace(model, view.prompt, chat=view.chat, intervention=iv)
    tab = iv.target_view()
    slot = TARGET_SLOT[tab]
    fig_before = views.build(tab, before, None, sel.clamp(before)).get(slot)
    fig_after = views.build(tab, after, None, sel.clamp(after)).get(slot)
    for fig, what in ((fig_before, "original"), (fig_after, "with the intervention")):
        if fig is not None and hasattr(fig, "layout"):
            fig.update_layout(title_text=f"{what}: {fig.layout.title.text}")
    return comp, [f_iv.next_token_figure(comp.before, comp.after, comp.kl, before.tokens[comp.position]),
                  f_iv.residual_change_figure(comp.resid_change, before.tokens), fig_before, fig_after]


def interventions_tab(state, layer_ctl, head_ctl, token_ctl) -> dict:
    """Build the tab. Returns {"text": the text box with the intervention's text form (share links),
    "apply": the handler, "outputs": its output components}, so a shared link can re-apply it."""
    gr.Markdown(CAPTION, elem_classes=["caption"])
    with gr.Row():
        kind = gr.Dropdown(KINDS, value=KINDS[0], label="Intervention", elem_id="iv-kind")
        layer = gr.Dropdown(["all", "0", "1", "2", "3"], value="all", label="Layer", allow_custom_value=True,
                            elem_id="iv-layer")
        head = gr.Dropdown(["all"] + [str(i) for i in range(8)], value="all", label="Head (sinks)",
                           allow_custom_value=True, elem_id="iv-head")
        expert = gr.Number(value=0, precision=0, label="Expert (ablate)", elem_id="iv-expert")
        token = gr.Number(value=-1, precision=0, label="Token position (force; -1 = last)", elem_id="iv-token")
        experts = gr.Textbox(value="0,1,2,3", label="Experts to force (comma-separated)", elem_id="iv-experts")
        window = gr.Number(value=32, precision=0, label="Window (tokens)", elem_id="iv-window")
    with gr.Row():
        text = gr.Textbox(label="Intervention (text form, editable; part of the share link)", elem_id="iv-text")
        go_btn = gr.Button("Apply", variant="primary", elem_id="iv-apply")
    summary = gr.Markdown("", elem_id="iv-summary")
    nxt, resid = plot_row("iv-next", "iv-resid")
    before, after = plot_row("iv-before", "iv-after")

    def on_controls(*vals):
        try:
            return build_intervention(*vals).to_str()
        except GptOssVizError:
            return gr.skip()

    controls = [kind, layer, head, expert, token, experts, window]
    for c in controls:
        c.change(on_controls, controls, [text], api_name=False)

    def on_apply(st, iv_text, layer_v, head_v, token_v):
        try:
            iv = Intervention.from_str((iv_text or "").strip())
            comp, figs = apply(st, iv, views.Selection(layer=int(layer_v), head=int(head_v), token=int(token_v)))
        except GptOssVizError as e:
            return [f"\u26a0\ufe0f {html.escape(str(e))}"] + [gr.skip()] * 4
        except torch.OutOfMemoryError:  # two forwards and a trace of the analysed prompt on a small GPU
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give back what the failed pass held, for the next request
            return ["\u26a0\ufe0f out of memory while applying the intervention: analyse a shorter prompt, or use a "
                    "smaller model"] + [gr.skip()] * 4
        if st:
            st["view"].intervention = iv.to_str()
        md = (f"**{html.escape(comp.description)}** \u2014 KL divergence at token {comp.position}: {comp.kl:.4f} "
              f"nats; largest logit change anywhere: {comp.max_logit_diff:.3g}.")
        return [md] + figs

    outputs = [summary, nxt, resid, before, after]
    go_btn.click(on_apply, [state, text, layer_ctl, head_ctl, token_ctl], outputs, api_name="intervene",
                 concurrency_limit=1, concurrency_id="model")
    return {"text": text, "apply": on_apply, "outputs": outputs}
