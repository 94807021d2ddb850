"""The Census tab: upload a prompts file, get expert statistics per label, with progress, cancel and downloads.
Named endpoint `census` (file + model choices -> report, figures, CSV and JSON)."""

from __future__ import annotations

import html
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import torch

from gptoss_viz.census import MAX_FILE_BYTES, MAX_PROMPTS, CensusInputError, parse_prompts, run_census, to_csv, to_json
from gptoss_viz.errors import GptOssVizError
from gptoss_viz.figures import census as f_census
from gptoss_viz.ui.layout import plot_row

CAPTION = (
    "Upload many prompts to see which experts handle what. Each line of a .txt file is a prompt; a .jsonl file "
    "has a `text` (or `prompt`) field and an optional `label`; a .csv file has a `text` (or `prompt`) column and "
    f"an optional `label` column. Limits: {MAX_FILE_BYTES // 2**20} MB and {MAX_PROMPTS:,} prompts per file; "
    "lines that cannot be read are skipped and counted in the report. Statistics are sums over all tokens of "
    "each label's prompts, from the same forward pass and hooks as the other tabs.")


class CancelFlag:
    """Per-user cancel switch kept in gr.State (a fresh one per session: deepcopy makes a new flag)."""

    def __init__(self):
        self.event = threading.Event()

    def __deepcopy__(self, memo):
        return CancelFlag()


def summarise(report, results, seconds: float) -> str:
    lines = [f"**{html.escape(report.summary())}**, {seconds:.1f} s."]
    for r in results:
        allst = r.stats.get("(all)")
        n = allst.prompts if allst else 0
        toks = allst.tokens if allst else 0
        lines.append(f"- `{html.escape(r.model)}`: {n} prompts, {toks:,} tokens ({toks / max(seconds, 1e-9):,.0f} "
                     "tokens/s overall)")
        for why, k in r.skipped.items():
            lines.append(f"  - left out: {k} {html.escape(why)}")
    return "\n".join(lines)


def census_tab(cfg, gptoss_dd, gpt2_dd) -> None:
    """Build the tab inside the current gr.Tabs (model pickers are the page's own)."""
    cancel = gr.State(CancelFlag())
    stats = gr.State(None)
    gr.Markdown(CAPTION, elem_classes=["caption"])
    with gr.Row():
        upload = gr.File(label="Prompts file (.txt, .jsonl, .csv)", file_types=[".txt", ".jsonl", ".csv"],
                         type="filepath", elem_id="census-file")
        with gr.Column():
            run = gr.Button("Run census", variant="primary", elem_id="census-run")
            stop = gr.Button("Cancel", elem_id="census-cancel")
    report = gr.Markdown("", elem_id="census-report")
    share = gr.Plot(show_label=False, elem_id="census-share")
    entropy, sinks = plot_row("census-entropy", "census-sinks")
    gpt2_first, gpt2_mlp = plot_row("census-gpt2-first", "census-gpt2-mlp")
    layer = gr.Slider(0, 3, value=0, step=1, label="Layer for the top-token table", elem_id="census-layer")
    table = gr.HTML(elem_classes=["viz-html"], elem_id="census-tokens")
    with gr.Row():
        csv_file = gr.File(label="statistics.csv", interactive=False, elem_id="census-csv")
        json_file = gr.File(label="statistics.json", interactive=False, elem_id="census-json")

    def on_run(path, gptoss_v, gpt2_v, flag: CancelFlag, progress=gr.Progress()):
        flag.event.clear()
        skip = [gr.skip()] * 10
        try:
            if not path:
                raise CensusInputError("choose a prompts file first")
            size = os.path.getsize(path)
            if size > MAX_FILE_BYTES:
                raise CensusInputError(f"the file is {size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB")
            parsed = parse_prompts(Path(path).read_bytes(), Path(path).name)
            start = time.perf_counter()
            results = []
            for name in (gptoss_v, gpt2_v):
                if not name or name == "none":
                    continue
                model = cfg.registry.get(name)
                results.append(run_census(
                    model, parsed.prompts, max_tokens=cfg.max_tokens, cancel=flag.event.is_set,
                    progress=lambda d, n, name=name: progress(d / n, desc=f"{name}: batch {d} of {n}")))
            if not results:
                raise CensusInputError("choose at least one model")
        except GptOssVizError as e:
            return [f"⚠️ {html.escape(str(e))}"] + skip
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return ["⚠️ out of memory: try fewer or shorter prompts, or a smaller model"] + skip
        except Exception as e:  # keep serving; say what happened
            return [f"⚠️ internal error: {html.escape(type(e).__name__)}: {html.escape(str(e))}"] + skip
        seconds = time.perf_counter() - start
        data = to_json(results, parsed)
        out = Path(tempfile.mkdtemp(prefix="gptoss-viz-census-"))
        (out / "statistics.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        (out / "statistics.csv").write_text(to_csv(results), encoding="utf-8")
        figs = _figures(data)
        n_layers = max((len(d["labels"]["(all)"].get("expert_share", d["labels"]["(all)"].get("mlp_active", [0])))
                        for d in data["models"].values()), default=1)
        return ([summarise(parsed, results, seconds)] + figs +
                [gr.Slider(maximum=max(n_layers - 1, 1), value=0), _table(data, 0), str(out / "statistics.csv"),
                 str(out / "statistics.json"), data])

    def _figures(data):
        oss = [(m, d) for m, d in data["models"].items() if d["arch"] == "gpt_oss"]
        g2 = [(m, d) for m, d in data["models"].items() if d["arch"] == "gpt2"]
        figs = [None] * 5
        if oss:
            m, d = oss[0]
            figs[0] = f_census.expert_share_figure(d["labels"], m)
            figs[1] = f_census.per_layer_figure(d["labels"], "router_entropy", m, "router entropy (normalised)",
                                                "entropy / log E")
            figs[2] = f_census.per_layer_figure(d["labels"], "sink_mass", m, "mean sink mass", "mass")
        if g2:
            m, d = g2[0]
            figs[3] = f_census.per_layer_figure(d["labels"], "first_token_mass", m, "mean first-token attention",
                                                "mass")
            figs[4] = f_census.per_layer_figure(d["labels"], "mlp_active", m, "share of MLP neurons active", "share")
        return figs

    def _table(data, layer):
        oss = [d for d in data["models"].values() if d["arch"] == "gpt_oss"]
        return f_census.top_tokens_table(oss[0]["labels"], int(layer)) if oss else ""

    run.click(on_run, [upload, gptoss_dd, gpt2_dd, cancel],
                          [report, share, entropy, sinks, gpt2_first, gpt2_mlp, layer, table, csv_file, json_file,
                           stats], api_name="census", concurrency_limit=1, concurrency_id="model")
    stop.click(lambda flag: flag.event.set(), [cancel], None, queue=False, api_name=False)
    layer.release(lambda data, v: _table(data, v) if data else gr.skip(), [stats, layer], [table], api_name=False)
