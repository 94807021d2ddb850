"""The Gradio UI: a prompt, two model pickers, and one tab per architectural change with gpt-oss and GPT-2 side by
side. Models run only on "Analyze" (named endpoint `analyze`); picking a layer, head or token redraws the views
from the traces kept in per-user state. Each tab is built by its own function."""

from __future__ import annotations

import html
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from gptoss_viz.errors import GptOssVizError
from gptoss_viz.figures import views
from gptoss_viz.trace import run_trace
from gptoss_viz.ui.census_tab import census_tab
from gptoss_viz.ui.export import export_html
from gptoss_viz.ui.interventions_tab import interventions_tab
from gptoss_viz.ui.registry import Registry
from gptoss_viz.ui.share import PromptStore, ViewState, from_query, to_query

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
# the view slots of each tab, in display order; "gpt2_*" slots sit in the GPT-2 column
SLOTS = {
    "overview": ["tokens", "card", "predictions"],
    "routing": ["grid", "load", "confidence", "path", "coactivation", "gpt2_mlp"],
    "sinks": ["mass", "per_token", "logits", "gpt2_mass"],
    "window": ["masks", "pattern", "distance", "beyond", "gpt2_pattern", "gpt2_distance"],
    "rope": ["frequencies", "angle", "score", "gpt2_positions", "gpt2_score"],
}
HTML_SLOTS = {("overview", "tokens"), ("overview", "card")}
MAX_LAYER, MAX_HEAD = 63, 127  # slider bounds before the first analysis (gpt2-xl: 48 layers; gpt-oss: 64 heads)
TAB_TITLES = {"overview": "Overview", "routing": "Expert routing", "sinks": "Attention sinks",
              "window": "Sliding window", "rope": "RoPE / YaRN"}


@dataclass
class AppConfig:
    registry: Registry
    store: PromptStore
    max_tokens: int = 1024  # longest prompt accepted (tokens), whatever the model could take
    max_chars: int = 100_000  # longest prompt text accepted before tokenizing
    queue_size: int = 16
    default: ViewState = field(default_factory=ViewState)


def load_examples() -> list[dict]:
    try:
        return json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []


# ---------------------------------------------------------------------------------------------------------------
# The work behind the controls (plain functions: the tests call them without a browser)

def clean_prompt(prompt, max_chars: int) -> tuple[str, list[str]]:
    """Refuse empty or huge prompts; drop control characters other than newline and tab, saying so."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise GptOssVizError("empty prompt: type or pick some text to analyse")
    if len(prompt) > max_chars:
        raise GptOssVizError(f"the prompt has {len(prompt):,} characters; the limit here is {max_chars:,}")
    notices = []
    kept = "".join(c for c in prompt if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127 and not 0x80 <= ord(c) < 0xA0))
    if kept != prompt:
        notices.append(f"removed {len(prompt) - len(kept)} control character(s) from the prompt")
    if not kept.strip():
        raise GptOssVizError("the prompt holds only control characters")
    return kept, notices


def run_models(cfg: AppConfig, prompt: str, gptoss: str, gpt2: str, chat: bool, progress=None):
    """Both traces for one prompt (either model may be 'none'). Returns (traces dict, notices)."""
    prompt, notices = clean_prompt(prompt, cfg.max_chars)
    traces = {}
    for key, name in (("oss", gptoss), ("gpt2", gpt2)):
        if not name or name == "none":
            continue
        model = cfg.registry.get(name, progress)
        use_chat = chat and key == "oss"
        try:
            traces[key] = run_trace(model, prompt, chat=use_chat, max_tokens=cfg.max_tokens)
        except GptOssVizError as e:  # with two models on screen, say which one refused (e.g. GPT-2's 512 limit)
            raise type(e)(f"{name}: {e}") from None
        except torch.OutOfMemoryError:
            traces.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give back what the failed pass held, for the next request
            raise GptOssVizError(f"{name}: out of memory on a {len(prompt):,}-character prompt; try a shorter prompt "
                                 "or a smaller model") from None
    if not traces:
        raise GptOssVizError("choose at least one model")
    return traces, prompt, notices


def render(traces: dict, sel: views.Selection, only: str | None = None, others=None) -> list:
    """View slots, in SLOTS order, from the stored traces (no model run except re-captured q/k): every tab's, or
    with `only` that tab's, and `others` (None clears a plot; gr.skip() leaves it) in the other tabs' slots."""
    if only is None:
        built = views.build_all(traces.get("oss"), traces.get("gpt2"), sel)
    else:
        built = {only: views.build(only, traces.get("oss"), traces.get("gpt2"), sel)} if only in SLOTS else {}
    return [built[tab].get(slot) if tab in built else others for tab in SLOTS for slot in SLOTS[tab]]


def status_line(traces: dict, prompt: str) -> str:
    parts = []
    for key, label in (("oss", "gpt-oss"), ("gpt2", "GPT-2")):
        tr = traces.get(key)
        if tr is not None:
            parts.append(f"{label} `{tr.model}`: {tr.T} tokens, {tr.seconds * 1e3:.0f} ms ({tr.path} path)")
    return " · ".join(parts)


def notice_md(notices: list[str]) -> str:
    # quote=False: quotes stay readable inside the `code` spans of messages (Markdown shows entities there as-is)
    return "\n\n".join(f"⚠️ {html.escape(n, quote=False)}" for n in notices)


# ---------------------------------------------------------------------------------------------------------------
# Building the page

def build_app(cfg: AppConfig) -> gr.Blocks:
    examples = load_examples()
    with gr.Blocks(title="gptoss-viz: GPT-2 -> gpt-oss, live", delete_cache=(1800, 3600)) as demo:
        state = gr.State(None)  # {"traces": {...}, "view": ViewState}: per user, never global
        gr.Markdown("# gptoss-viz\nWhat changed from GPT-2 to gpt-oss, computed live from real forward passes. "
                    "Type a prompt, press **Analyze**, then explore the tabs; gpt-oss on the left, GPT-2 on the "
                    "right.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, max_lines=12, value=cfg.default.prompt,
                                    placeholder="Type text, or pick an example below", elem_id="prompt")
                if examples:
                    ex = gr.Dropdown([e["name"] for e in examples], label="Examples", value=None,
                                     elem_id="examples")
            with gr.Column(scale=2):
                gptoss = gr.Dropdown(cfg.registry.gptoss_choices + ["none"], value=cfg.default.gptoss,
                                     label="gpt-oss model", elem_id="gptoss")
                gpt2 = gr.Dropdown(cfg.registry.gpt2_choices + ["none"], value=cfg.default.gpt2, label="GPT-2 model",
                                   elem_id="gpt2")
                chat = gr.Checkbox(value=cfg.default.chat, label="gpt-oss reads it as a harmony chat turn",
                                   elem_id="chat")
                analyze = gr.Button("Analyze", variant="primary", elem_id="analyze")
        # labels name the outputs of the `analyze` endpoint for gradio_client users; they are not shown
        notice = gr.Markdown("", label="notice", show_label=False, elem_id="notice")
        status = gr.Markdown("", label="status", show_label=False, elem_id="status")
        with gr.Row():
            # The widest ranges any offered model could need: the server checks every call (API ones too)
            # against these until an analysis narrows them to the models loaded (values past those are clamped).
            # Narrow ones here refused, e.g., token=5 from a fresh gradio_client session.
            layer = gr.Slider(0, MAX_LAYER, value=cfg.default.layer, step=1, label="Layer", elem_id="layer")
            head = gr.Slider(0, MAX_HEAD, value=cfg.default.head, step=1, label="Head", elem_id="head")
            token = gr.Slider(-1, max(cfg.max_tokens - 1, 0), value=-1, step=1, label="Token (-1 = last)",
                              elem_id="token")
        with gr.Tabs(selected=cfg.default.tab, elem_id="tabs") as tabs:
            slots = {}
            for tab in SLOTS:
                with gr.Tab(TAB_TITLES[tab], id=tab, elem_id=f"tab-{tab}"):
                    gr.Markdown(views.CAPTIONS[tab], elem_classes=["caption"])
                    slots.update(_tab(tab))
            with gr.Tab("Interventions", id="interventions", elem_id="tab-interventions"):
                iv = interventions_tab(state, layer, head, token)
                iv_text = iv["text"]
            with gr.Tab("Census", id="census", elem_id="tab-census"):
                census_tab(cfg, gptoss, gpt2)
        with gr.Row():
            share_btn = gr.Button("Copy share link", elem_id="share")
            # max_lines: a link carrying a prompt would otherwise wrap into a column many lines tall
            share_box = gr.Textbox(label="Share link", interactive=False, elem_id="share-link", buttons=["copy"],
                                   lines=1, max_lines=2)
            png_btn = gr.Button("Download this tab as PNG", elem_id="tab-png")
            export_btn = gr.Button("Export this tab as HTML", elem_id="export")
            # hidden until there is a file: empty, it showed a tall upload-like box
            export_file = gr.File(label="HTML export", interactive=False, visible=False, elem_id="export-file")
        current_tab = gr.State(cfg.default.tab)

        outputs = [slots[(t, s)] for t in SLOTS for s in SLOTS[t]]

        def _selection(layer_v, head_v, token_v):
            return views.Selection(layer=int(layer_v), head=int(head_v), token=int(token_v))

        def on_analyze(prompt_v, gptoss_v, gpt2_v, chat_v, layer_v, head_v, token_v, tab_v,
                       progress=gr.Progress(track_tqdm=True), lazy=False):
            """Both models on the prompt -> every view (the `analyze` endpoint). With `lazy` (the page's own
            button) only the visible tab's views are built and sent; the others are cleared and built when their
            tab is opened: the browser then redraws a few figures, not all of them (2-core CPU: 1.5 s -> ~0.8 s)."""
            try:
                traces, text, notices = run_models(cfg, prompt_v, gptoss_v, gpt2_v, chat_v)
                first = traces.get("oss") or traces.get("gpt2")
                sel = _selection(layer_v, head_v, token_v).clamp(first)
                figs = render(traces, sel, only=tab_v) if lazy else render(traces, sel)
            except GptOssVizError as e:
                return [gr.skip()] * 5 + [notice_md([str(e)]), gr.skip()] + [gr.skip()] * len(outputs)
            except Exception as e:  # never take the server down; say what happened
                log.exception("analyze failed")
                return [gr.skip()] * 5 + [notice_md([f"internal error: {type(e).__name__}: {e}"]),
                                          gr.skip()] + [gr.skip()] * len(outputs)
            tok = int(token_v) if -1 <= int(token_v) < first.T else -1  # the slider's range: -1 (last) .. T-1
            view = ViewState(prompt=text, gptoss=gptoss_v, gpt2=gpt2_v, chat=bool(chat_v), tab=tab_v,
                             layer=sel.layer, head=sel.head, token=tok)
            new_state = {"traces": traces, "view": view,
                         "fresh": {tab_v} if lazy else set(SLOTS)}  # tabs whose views show this selection
            # gr.update, not gr.Slider(...): the constructor refuses maximum <= its default minimum of 0, which a
            # one-token prompt (token maximum 0) or a one-layer model would hit after the work is done
            return ([new_state, gr.update(maximum=max(first.n_layers - 1, 1), value=sel.layer),
                     gr.update(maximum=max(first.n_heads - 1, 1), value=sel.head),
                     gr.update(maximum=max(first.T - 1, 0), value=tok), text,
                     notice_md(notices), status_line(traces, text)] + figs)

        def on_analyze_page(prompt_v, gptoss_v, gpt2_v, chat_v, layer_v, head_v, token_v, tab_v,
                            progress=gr.Progress(track_tqdm=True)):  # declared here, or Gradio shows no progress
            return on_analyze(prompt_v, gptoss_v, gpt2_v, chat_v, layer_v, head_v, token_v, tab_v, progress,
                              lazy=True)

        analyze_inputs = [prompt, gptoss, gpt2, chat, layer, head, token, current_tab]
        analyze_outputs = [state, layer, head, token, prompt, notice, status] + outputs
        # The page's button: the visible tab only. Progress shows on the status line alone: a running timer on
        # every output kept a CPU core busy in the browser and slowed the forward passes ~3x on 2 cores.
        analyze.click(_gpu(on_analyze_page), analyze_inputs, analyze_outputs, api_name=False,
                      concurrency_limit=1, concurrency_id="model", show_progress_on=[status])
        # The `analyze` endpoint for gradio_client and other API users: every view, from a button never shown
        api_button = gr.Button(visible=False, elem_id="analyze-api")
        api_button.click(_gpu(on_analyze), analyze_inputs, analyze_outputs, api_name="analyze",
                         concurrency_limit=1, concurrency_id="model", show_progress_on=[status])

        def on_select(st, layer_v, head_v, token_v, tab_v):
            """A new layer/head/token redraws the visible tab from the stored traces; the others when opened."""
            if not st:
                return [gr.skip()] * (1 + len(outputs))
            traces = st["traces"]
            first = traces.get("oss") or traces.get("gpt2")
            sel = _selection(layer_v, head_v, token_v).clamp(first)
            st["view"].layer, st["view"].head, st["view"].token = sel.layer, sel.head, int(token_v)
            st["fresh"] = {tab_v}
            return [gr.skip()] + render(traces, sel, only=tab_v)

        for ctl in (layer, head, token):
            # always_last: with Gradio's default ("once") a release while the last one is still queued is dropped,
            # and the views would stay at the previous position
            ctl.release(on_select, [state, layer, head, token, current_tab], [status] + outputs, api_name=False,
                        concurrency_limit=1, concurrency_id="model", show_progress_on=[status],
                        trigger_mode="always_last")

        def on_tab(evt: gr.SelectData, st):
            tab_id = evt.value if isinstance(evt.value, str) and evt.value in SLOTS else None
            # gr.SelectData carries the tab's title
            for t, title in {**TAB_TITLES, "census": "Census", "interventions": "Interventions"}.items():
                if evt.value == title:
                    tab_id = t
            if st and tab_id:
                st["view"].tab = tab_id
            figs = [gr.skip()] * len(outputs)
            if st and tab_id in SLOTS and tab_id not in st.setdefault("fresh", set(SLOTS)):
                v = st["view"]  # this tab was cleared by a newer analysis or selection: build it now
                first = st["traces"].get("oss") or st["traces"].get("gpt2")
                sel = views.Selection(layer=v.layer, head=v.head, token=v.token).clamp(first)
                figs = render(st["traces"], sel, only=tab_id, others=gr.skip())
                st["fresh"].add(tab_id)
            return [tab_id or gr.skip(), gr.skip()] + figs

        # multiple: with the default ("once"), a tab opened while the previous tab's event still waited in the
        # queue was dropped: its views were never built and `current_tab` kept the old tab. ("always_last" sends
        # the held event with the first click's SelectData, i.e. the wrong tab; Gradio 6.31.)
        tabs.select(on_tab, [state], [current_tab, status] + outputs, api_name=False,
                    concurrency_limit=1, concurrency_id="model", show_progress_on=[status],
                    trigger_mode="multiple")

        def on_share(st, prompt_v, gptoss_v, gpt2_v, chat_v, tab_v, layer_v, head_v, token_v, iv_v):
            v = ViewState(prompt=prompt_v or "", gptoss=gptoss_v, gpt2=gpt2_v, chat=bool(chat_v), tab=tab_v,
                          layer=int(layer_v), head=int(head_v), token=int(token_v),
                          intervention=(st["view"].intervention if st else "") or "")
            try:
                return to_query(v, cfg.store)
            except ValueError as e:
                return f"cannot share: {e}"

        share_btn.click(on_share, [state, prompt, gptoss, gpt2, chat, current_tab, layer, head, token, iv_text],
                        [share_box], api_name=False).then(
            None, [share_box], [share_box], api_name=False,
            js="(q) => { if (!q || !q.startsWith('?')) return q; const u = window.location.origin + "
               "window.location.pathname + q; try { navigator.clipboard.writeText(u); } catch (e) {} return u; }")

        def on_export(st, tab_v, link):
            if not st:
                return None, notice_md(["analyze a prompt first, then export"])
            if tab_v not in SLOTS:
                return None, notice_md(["the census has its own CSV and JSON downloads"])
            v: ViewState = st["view"]
            traces = st["traces"]
            first = traces.get("oss") or traces.get("gpt2")
            sel = views.Selection(layer=v.layer, head=v.head, token=v.token).clamp(first)
            figs = views.build(tab_v, traces.get("oss"), traces.get("gpt2"), sel)
            page = export_html(figs, TAB_TITLES[tab_v], v.prompt, [tr.model for tr in traces.values()],
                               link if isinstance(link, str) and link.startswith("http") else "",
                               views.CAPTIONS[tab_v])
            out = Path(tempfile.mkdtemp(prefix="gptoss-viz-export-")) / f"gptoss-viz-{tab_v}-{int(time.time())}.html"
            out.write_text(page, encoding="utf-8")
            return gr.update(value=str(out), visible=True), ""

        export_btn.click(on_export, [state, current_tab, share_box], [export_file, notice], api_name=False)
        png_btn.click(None, None, None, js=(ASSETS / "tab_png.js").read_text(encoding="utf-8"), api_name=False)

        if examples:
            def on_example(name):
                for e in examples:
                    if e["name"] == name:
                        return e["prompt"], bool(e.get("chat", False))
                return gr.skip(), gr.skip()

            ex.change(on_example, [ex], [prompt, chat], api_name=False)

        def on_load(request: gr.Request):
            """Restore a shared view from the URL's query parameters (invalid ones fall back, with a notice)."""
            params = dict(request.query_params) if request is not None else {}
            if not params:
                return [gr.skip()] * 11
            v, notices = from_query(params, cfg.store, cfg.registry.gptoss_choices + ["none"],
                                    cfg.registry.gpt2_choices + ["none"], cfg.default)
            # gr.update, not gr.Slider(...): a constructor checks minimum < maximum against its own defaults
            # (minimum 0), which token = -1 (the last token, in every default link) fails. The real maxima
            # arrive with the analysis that follows.
            return [v.prompt, v.gptoss, v.gpt2, v.chat, gr.update(value=v.layer, maximum=max(v.layer, 1)),
                    gr.update(value=v.head, maximum=max(v.head, 1)),
                    gr.update(value=v.token, maximum=max(v.token, 0)), gr.Tabs(selected=v.tab), v.tab,
                    notice_md(notices), v.intervention]

        def on_load_analyze(prompt_v, gptoss_v, gpt2_v, chat_v, layer_v, head_v, token_v, tab_v, notice_v,
                            progress=gr.Progress(track_tqdm=True)):
            """The page opens analysed: the default prompt, or the shared link's."""
            if not (prompt_v or "").strip():
                return [gr.skip()] * (7 + len(outputs))
            out = on_analyze(prompt_v, gptoss_v, gpt2_v, chat_v, layer_v, head_v, token_v, tab_v, progress,
                             lazy=True)
            if notice_v:  # the link's own notices (invalid parameters fell back) stay on screen
                out[5] = "\n\n".join(n for n in (notice_v, out[5]) if isinstance(n, str) and n)
            return out

        def on_load_intervene(st, iv_v, layer_v, head_v, token_v):
            """A shared link with an intervention re-applies it once the prompt is analysed."""
            if not (iv_v or "").strip() or not st:
                return [gr.skip()] * len(iv["outputs"])
            return iv["apply"](st, iv_v, layer_v, head_v, token_v)

        demo.load(on_load, None, [prompt, gptoss, gpt2, chat, layer, head, token, tabs, current_tab, notice, iv_text],
                  api_name=False).then(
            _gpu(on_load_analyze), [prompt, gptoss, gpt2, chat, layer, head, token, current_tab, notice],
            [state, layer, head, token, prompt, notice, status] + outputs, api_name=False,
            concurrency_limit=1, concurrency_id="model", show_progress_on=[status]).then(
            _gpu(on_load_intervene), [state, iv_text, layer, head, token], iv["outputs"], api_name=False,
            concurrency_limit=1, concurrency_id="model")
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=1)
    return demo


def _tab(tab: str) -> dict:
    """One tab's layout: gpt-oss's views on the left, GPT-2's on the right (overview: full width)."""
    out = {}
    names = SLOTS[tab]
    left = [n for n in names if not n.startswith("gpt2_")]
    right = [n for n in names if n.startswith("gpt2_")]

    def slot(name):
        if (tab, name) in HTML_SLOTS:
            out[(tab, name)] = gr.HTML(label=f"{tab}/{name}", show_label=False, elem_id=f"{tab}-{name}",
                                       elem_classes=["viz-html"])
        else:
            out[(tab, name)] = gr.Plot(label=f"{tab}/{name}", show_label=False, elem_id=f"{tab}-{name}")

    if not right:
        for n in left:
            slot(n)
        return out
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### gpt-oss")
            for n in left:
                slot(n)
        with gr.Column():
            gr.Markdown("### GPT-2")
            for n in right:
                slot(n)
    return out


def _gpu(fn):
    """On Hugging Face ZeroGPU Spaces (the `spaces` package present), run model work inside a GPU slot."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)

