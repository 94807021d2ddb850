"""The real Gradio server on loopback, driven through its named `analyze` endpoint with gradio_client, as an API
user would: good prompts, every kind of bad input, and a Hub model chosen while off-line. Then share links
(query string <-> view, the bounded prompt store) and the self-contained HTML export as plain units.

The whole module runs with the Hugging Face Hub off-line and an empty HF cache: nothing here downloads.
"""

from __future__ import annotations

import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl

import plotly
import plotly.graph_objects as go
import pytest

from serving import serve_app

gradio_client = pytest.importorskip("gradio_client")

from gptoss_viz.errors import GptOssVizError, ModelLoadError  # noqa: E402
from gptoss_viz.ui.app import SLOTS, run_models  # noqa: E402
from gptoss_viz.ui.export import export_html  # noqa: E402
from gptoss_viz.ui.share import MAX_URL_PROMPT, PromptStore, ViewState, from_query, to_query  # noqa: E402

GOOD = "The quick brown fox jumps over the lazy dog while the cat watches from the window."

# a stable part of each figure's title (layer/head placeholders filled in by `expected_titles`)
TITLES = {
    "overview/predictions": "Next token after",
    "routing/grid": "Top-1 expert of every token in every layer",
    "routing/load": "Expert load per layer",
    "routing/confidence": "Router confidence",
    "routing/path": "Route of token",
    "routing/coactivation": "Experts chosen together, layer {L}",
    "routing/gpt2_mlp": "GPT-2: every token runs the whole MLP",
    "sinks/mass": "gpt-oss: mean mass parked on the learned sink",
    "sinks/per_token": "Sink probability per token, layer {L} head {H}",
    "sinks/logits": "Learned sink logit of every head",
    "sinks/gpt2_mass": "GPT-2: mean attention on the first token",
    "window/masks": "Which keys each query may attend to",
    "window/pattern": "gpt-oss layer {L} ({kind}) head {H}",
    "window/distance": "gpt-oss: where attention goes, by distance",
    "window/beyond": "gpt-oss: attention mass",
    "window/gpt2_pattern": "GPT-2 layer {L2} head {H2} (full causal)",
    "window/gpt2_distance": "GPT-2: where attention goes, by distance",
    "rope/frequencies": "Rotation frequency of each dimension pair",
    "rope/angle": "Angle of pair",
    "rope/score": "gpt-oss: mean q\u00b7k/\u221aD by distance, layer {L} head {H}",
    "rope/gpt2_positions": "GPT-2: similarity of its learned position embeddings",
    "rope/gpt2_score": "GPT-2: mean q\u00b7k/\u221aD by distance, layer {L2} head {H2}",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as `python app.py` builds it (bundled nano models, CPU), on 127.0.0.1 and a free port."""
    with serve_app(tmp_path_factory.mktemp("app")) as (url, cfg):
        yield {"url": url, "cfg": cfg}


@pytest.fixture(scope="module")
def client(server):
    return fresh_client(server)


def analyze(client, prompt, gptoss="gpt-oss-nano", gpt2="gpt2-nano", chat=False, layer=1, head=0, token=-1) -> dict:
    """One call of the `analyze` endpoint; its outputs by label (Layer, Head, ..., notice, status, tab/slot)."""
    out = client.predict(prompt, gptoss, gpt2, chat, layer, head, token, api_name="/analyze")
    assert len(out) == len(client.output_names), f"{len(out)} outputs for {len(client.output_names)} labels"
    return dict(zip(client.output_names, out))


def is_skip(v) -> bool:
    """An output left unchanged (gr.skip()) reaches the client as a bare update."""
    if isinstance(v, dict) and v.get("__type__") == "update":
        props = v.get("props", v)
        return set(props) <= {"__type__", "props"} or props == {"__type__": "update"}
    return False


def figure(v) -> dict:
    assert isinstance(v, dict) and v.get("type") == "plotly", f"not a plotly plot: {str(v)[:200]}"
    fig = json.loads(v["plot"])
    assert fig.get("data"), f"plot without traces: {fig.get('layout', {}).get('title')}"
    return fig


def title(fig: dict) -> str:
    t = fig["layout"].get("title", {})
    return t.get("text", "") if isinstance(t, dict) else str(t)


def strings(obj):
    """Every string inside a decoded JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def token_counts(status: str) -> dict:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"`([^`]+)`: (\d+) tokens", status)}


def assert_refused(out: dict, *fragments):
    """A refusal: a notice saying why, and no figure, status or state replaced (the old view stays)."""
    notice = out["notice"]
    for f in fragments:
        assert f in notice, f"notice should mention {f!r}; it was: {notice!r}"
    assert notice.startswith("\u26a0"), notice
    for name in ["status"] + [f"{t}/{s}" for t in SLOTS for s in SLOTS[t]]:
        assert is_skip(out[name]), f"{name} changed on a refused request: {str(out[name])[:200]}"


# ---------------------------------------------------------------------------------------------------------------
# The endpoint, good input

def test_endpoint_outputs_are_named(client):
    names = client.output_names
    assert names[:6] == ["Layer", "Head", "Token (-1 = last)", "Prompt", "notice", "status"], names[:6]
    assert names[6:] == [f"{t}/{s}" for t in SLOTS for s in SLOTS[t]]


@pytest.mark.parametrize("layer,head", [(1, 0), (3, 5)])
def test_analyze_returns_every_view(client, layer, head):
    out = analyze(client, GOOD, layer=layer, head=head)
    assert out["notice"] == ""
    counts = token_counts(out["status"])
    assert set(counts) == {"gpt-oss-nano", "gpt2-nano"}, out["status"]
    assert counts["gpt-oss-nano"] > 5 and counts["gpt2-nano"] > 5
    assert out["Prompt"] == GOOD
    assert out["Layer"]["value"] == layer and out["Layer"]["maximum"] == 3
    assert out["Head"]["value"] == head and out["Head"]["maximum"] == 7
    assert out["Token (-1 = last)"]["maximum"] == counts["gpt-oss-nano"] - 1

    tokens = out["overview/tokens"]
    assert tokens.count('class="tok"') == counts["gpt-oss-nano"] + counts["gpt2-nano"], tokens[:300]
    assert ">quick<" in tokens or "quick" in tokens
    assert "<table" in out["overview/card"] and "Sliding-window attention" in out["overview/card"]

    kind = "full" if layer % 2 else "sliding"  # nano: sliding, full, sliding, full
    L2 = layer  # gpt2-nano has 4 layers too: the same relative depth is the same index
    H2 = min(head, 6)  # 7 heads
    for t in SLOTS:
        for s in SLOTS[t]:
            name = f"{t}/{s}"
            if name in ("overview/tokens", "overview/card"):
                continue
            want = TITLES[name].format(L=layer, H=head, kind=kind, L2=L2, H2=H2)
            got = title(figure(out[name]))
            assert got.startswith(want), f"{name}: title {got!r} should start with {want!r}"


def test_one_token_prompt(client):
    """A prompt of one token: every view still builds, the token slider spans -1..0."""
    out = analyze(client, "a")
    assert out["notice"] == ""
    assert token_counts(out["status"]) == {"gpt-oss-nano": 1, "gpt2-nano": 1}
    assert out["Token (-1 = last)"]["maximum"] == 0 and out["Token (-1 = last)"]["value"] == -1
    figure(out["sinks/per_token"])


def fresh_client(server):
    """A new session: its sliders keep the wide bounds they are built with (an analysis narrows a session's)."""
    c = gradio_client.Client(server["url"], verbose=False, analytics_enabled=False, download_files=False)
    returns = c.view_api(return_format="dict", print_info=False)["named_endpoints"]["/analyze"]["returns"]
    c.output_names = [r["label"] for r in returns]
    return c


def test_out_of_range_selection_is_clamped(server):
    out = analyze(fresh_client(server), GOOD, layer=40, head=100, token=1000)
    assert out["notice"] == ""
    assert out["Layer"]["value"] == 3 and out["Head"]["value"] == 7 and out["Token (-1 = last)"]["value"] == -1
    assert title(figure(out["window/pattern"])) == "gpt-oss layer 3 (full) head 7"


def test_only_one_model(client):
    out = analyze(client, GOOD, gpt2="none")
    assert set(token_counts(out["status"])) == {"gpt-oss-nano"}
    figure(out["routing/grid"])
    out = analyze(client, GOOD, gptoss="none")
    assert set(token_counts(out["status"])) == {"gpt2-nano"}
    grid = json.loads(out["routing/grid"]["plot"])  # an empty figure that says why
    assert "Load a gpt-oss model" in json.dumps(grid["layout"]["annotations"])
    assert_refused(analyze(client, GOOD, gptoss="none", gpt2="none"), "choose at least one model")


def test_chat_mode(client):
    out = analyze(client, "What is an attention sink?", chat=True)
    counts = token_counts(out["status"])
    assert counts["gpt-oss-nano"] > counts["gpt2-nano"], "the harmony rendering adds the system/user turn"


# ---------------------------------------------------------------------------------------------------------------
# The endpoint, bad input: a notice, and the server keeps serving

@pytest.mark.parametrize("prompt", ["", "   ", " \n\t \n"])
def test_empty_prompt_refused(client, prompt):
    assert_refused(analyze(client, prompt), "empty prompt")


def test_over_token_limit_refused_not_truncated(client, server):
    limit = server["cfg"].max_tokens
    assert limit == 1024
    out = analyze(client, "word " * (limit + 200))
    assert_refused(out, "tokens long", f"at most {limit}")
    # gpt2-nano's own limit (512 positions) is lower: the notice names the model that refused
    out = analyze(client, "word " * 700)
    assert_refused(out, "gpt2-nano", "at most 512")
    # and a prompt over the character limit is refused before tokenizing
    assert_refused(analyze(client, "x" * (server["cfg"].max_chars + 1)), "characters", "limit")


def test_control_characters_removed_with_notice(client):
    out = analyze(client, "tab\there\nnew line\x00 bell\x07 esc\x1b del\x7f c1\x85 end")
    assert "removed 5 control character(s)" in out["notice"], out["notice"]
    assert out["Prompt"] == "tab\there\nnew line bell esc del c1 end"  # the box shows what was analysed
    assert token_counts(out["status"])["gpt-oss-nano"] > 3
    figure(out["routing/grid"])
    assert_refused(analyze(client, "\x00\x01\x02"), "only control characters")


def test_html_in_prompt_is_shown_as_text(client):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> & <b>bold</b>'
    out = analyze(client, evil)
    assert out["notice"] == ""
    assert out["Prompt"] == evil  # a textbox value: text, not markup
    for name in ("overview/tokens", "status", "notice"):
        for bad in ("<script", "<img", "<b>bold"):
            assert bad not in out[name], f"{name} carries raw markup {bad!r}: {out[name][:300]}"
    assert "&lt;" in out["overview/tokens"]
    for t in SLOTS:
        for s in SLOTS[t]:
            if (t, s) in (("overview", "tokens"), ("overview", "card")):
                continue
            for text in strings(figure(out[f"{t}/{s}"])):
                assert "<script" not in text and "<img" not in text, f"{t}/{s} carries raw markup: {text[:200]}"


def test_model_not_on_the_list(client, server):
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        analyze(client, GOOD, gptoss="evil/model")
    assert "evil/model" in str(e.value) and "not in the list of choices" in str(e.value), str(e.value)
    # behind the dropdown, the registry refuses names off the list too (never loads an arbitrary Hub id)
    with pytest.raises(ModelLoadError, match="not offered by this app"):
        run_models(server["cfg"], GOOD, "evil/model", "none", False)
    assert analyze(client, GOOD)["notice"] == ""  # still serving


@pytest.mark.parametrize("model", ["openai/gpt-oss-20b", "openai-community/gpt2"])
def test_hub_model_offline_says_how_to_get_it(client, model):
    kw = {"gptoss": model} if "oss" in model else {"gpt2": model}
    out = analyze(client, GOOD, **kw)
    assert_refused(out, f"cannot load '{model}'", "unreachable", f"hf download {model}", "local directory")
    assert "&quot;" not in out["notice"] and "&#x27;" not in out["notice"], "entities would show as-is in code spans"
    after = analyze(client, GOOD)  # the server keeps serving
    assert after["notice"] == "" and token_counts(after["status"])["gpt-oss-nano"] > 5


def test_registry_loads_once_and_shares(server):
    reg = server["cfg"].registry
    assert set(reg.loaded()) == {"gpt-oss-nano", "gpt2-nano"}, reg.loaded()  # failed Hub loads left nothing
    assert reg.get("gpt-oss-nano") is reg.get("gpt-oss-nano")


def test_run_models_refuses_an_empty_prompt(server):
    with pytest.raises(GptOssVizError, match="empty prompt"):
        run_models(server["cfg"], " ", "gpt-oss-nano", "gpt2-nano", False)


# ---------------------------------------------------------------------------------------------------------------
# share.py: links and the prompt store

CHOICES_OSS = ["gpt-oss-nano", "openai/gpt-oss-20b", "none"]
CHOICES_GPT2 = ["gpt2-nano", "openai-community/gpt2", "none"]
DEFAULT = ViewState(prompt="default prompt")


def parse(query: str) -> dict:
    assert query.startswith("?"), query
    return dict(parse_qsl(query[1:], keep_blank_values=True))


def test_share_round_trip(tmp_path):
    store = PromptStore(tmp_path / "store")
    v = ViewState(prompt="Caf\u00e9 & co: a=1?b#2 <b>x</b>\n\tnext line \u2603", gptoss="openai/gpt-oss-20b",
                  gpt2="none", chat=True, tab="window", layer=3, head=5, token=7)
    q = to_query(v, store)
    assert "pid=" not in q
    back, notices = from_query(parse(q), store, CHOICES_OSS, CHOICES_GPT2, DEFAULT)
    assert notices == []
    assert back == v
    v2 = ViewState(prompt="p", chat=False, token=-1)
    back2, notices = from_query(parse(to_query(v2, store)), store, CHOICES_OSS, CHOICES_GPT2, DEFAULT)
    assert back2 == v2 and notices == []
    assert list(store.root.iterdir()) == [], "short prompts travel in the URL, not the store"


def test_long_prompt_is_stored_by_id(tmp_path):
    store = PromptStore(tmp_path / "store")
    long = "token " * (MAX_URL_PROMPT // 3)
    assert len(long) > MAX_URL_PROMPT
    q = to_query(ViewState(prompt=long, tab="sinks"), store)
    params = parse(q)
    assert "prompt" not in params and re.fullmatch(r"[0-9a-f]{64}", params["pid"]), q
    assert len(q) < 400
    assert (store.root / f"{params['pid']}.txt").read_text(encoding="utf-8") == long
    back, notices = from_query(params, store, CHOICES_OSS, CHOICES_GPT2, DEFAULT)
    assert notices == [] and back.prompt == long and back.tab == "sinks"
    assert to_query(ViewState(prompt=long, tab="sinks"), store) == q, "content-addressed: same prompt, same id"
    assert len(list(store.root.glob("*.txt"))) == 1


@pytest.mark.parametrize("params,fragment,field,fallback", [
    ({"tab": "bogus"}, "unknown tab", "tab", "overview"),
    ({"tab": "<script>"}, "unknown tab", "tab", "overview"),
    ({"layer": "abc"}, "invalid layer", "layer", 1),
    ({"layer": "-3"}, "invalid layer", "layer", 1),
    ({"layer": "1e9"}, "invalid layer", "layer", 1),
    ({"head": "99999999"}, "invalid head", "head", 0),
    ({"token": "-2"}, "invalid token", "token", -1),
    ({"token": "3.5"}, "invalid token", "token", -1),
    ({"gptoss": "evil/model"}, "not offered here", "gptoss", "gpt-oss-nano"),
    ({"gpt2": "../../etc/passwd"}, "not offered here", "gpt2", "gpt2-nano"),
    ({"pid": "0" * 64}, "unknown or expired", "prompt", "default prompt"),
    ({"pid": "not-an-id"}, "unknown or expired", "prompt", "default prompt"),
])
def test_invalid_params_fall_back_with_notice(tmp_path, params, fragment, field, fallback):
    store = PromptStore(tmp_path / "store")
    v, notices = from_query({"prompt": "kept", **params} if field != "prompt" else params, store,
                            CHOICES_OSS, CHOICES_GPT2, DEFAULT)
    assert getattr(v, field) == fallback
    assert len(notices) == 1 and fragment in notices[0], notices
    if field != "prompt":
        assert v.prompt == "kept", "one bad parameter must not reset the others"


def test_many_invalid_params_each_get_a_notice(tmp_path):
    v, notices = from_query({"tab": "x", "layer": "y", "head": "z", "gptoss": "w", "chat": "maybe"},
                            PromptStore(tmp_path / "s"), CHOICES_OSS, CHOICES_GPT2, DEFAULT)
    assert len(notices) == 4, notices
    assert v == DEFAULT


def test_pid_cannot_read_outside_the_store(tmp_path):
    store = PromptStore(tmp_path / "store")
    secret_id = "a" * 64
    (tmp_path / f"{secret_id}.txt").write_text("SECRET", encoding="utf-8")  # a valid-looking id, one level up
    (tmp_path / "secret.txt").write_text("SECRET", encoding="utf-8")
    attempts = [f"../{secret_id}", "../secret", str(tmp_path / "secret"), str(tmp_path / secret_id),
                f"{secret_id}/../../{secret_id}", f"{secret_id}\n", f"{secret_id}\x00", "..", ".", "",
                "/etc/passwd", "%2e%2e%2fsecret", f"..\\{secret_id}", secret_id.upper()]
    for pid in attempts:
        assert store.get(pid) is None, f"pid {pid!r} read a file"
        v, notices = from_query({"pid": pid}, store, CHOICES_OSS, CHOICES_GPT2, DEFAULT)
        assert v.prompt == "default prompt" and notices, pid
    assert store.get(None) is None and store.get(123) is None
    # files are named by the text's hash, never by the text: put() writes inside the store whatever it is given
    store.put("../../escape")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{secret_id}.txt", "secret.txt", "store"])


def test_store_stays_bounded(tmp_path):
    store = PromptStore(tmp_path / "store", max_files=5, max_bytes=10_000, max_prompt_bytes=4_000)
    ids = [store.put(f"prompt {i} " + "x" * 100) for i in range(12)]
    files = list(store.root.glob("*.txt"))
    assert len(files) == 5, f"{len(files)} files kept, limit 5"
    assert store.get(ids[-1]) is not None and store.get(ids[0]) is None, "the oldest go first"
    for i in range(6):
        store.put(f"big {i} " + "y" * 3_000)
    sizes = [p.stat().st_size for p in store.root.glob("*.txt")]
    assert sum(sizes) <= 10_000, f"{sum(sizes)} bytes kept, limit 10000"
    assert len(sizes) <= 5
    with pytest.raises(ValueError, match="too large to share"):
        store.put("z" * 4_001)
    assert not list(store.root.glob(".*")), "no temporary files left behind"


def test_store_reuse_refreshes(tmp_path):
    store = PromptStore(tmp_path / "store", max_files=3)
    a = store.put("first")
    store.put("second")
    store.put("third")
    old = time.time() - 100
    for p in store.root.glob("*.txt"):
        os.utime(p, (old, old))
    assert store.put("first") == a  # touched: now the newest
    store.put("fourth")
    assert store.get(a) == "first"
    assert len(list(store.root.glob("*.txt"))) == 3


# ---------------------------------------------------------------------------------------------------------------
# export.py: one self-contained HTML file

class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.srcs, self.stack, self.errors = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a and tag in ("script", "link", "img", "iframe"):
                self.srcs.append(a[k])
        if tag not in ("meta", "br", "img", "link", "input", "hr"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse_html(page: str) -> _Parser:
    p = _Parser()
    p.feed(page)
    p.close()
    return p


def test_export_is_valid_self_contained_html():
    evil = '<script>alert("x")</script></pre><img src=x onerror=alert(1)>'
    figs = {"a": go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout={"title": {"text": "first figure"}}),
            "b": go.Figure(go.Scatter(y=[1, 3, 2]), layout={"title": {"text": "second figure"}}),
            "tokens": '<div class="tokgrid"><span class="tok">&lt;script&gt;</span></div>'}
    page = export_html(figs, "Sliding window", evil, ["gpt-oss-nano", "<i>gpt2</i>"],
                       'http://127.0.0.1:7860/?prompt=a"b<c>&tab=window', "caption <b>x</b>")
    assert page.lstrip().lower().startswith("<!doctype html>")
    p = parse_html(page)
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert p.tags.count("html") == 1 and p.tags.count("body") == 1
    assert [s for s in p.srcs if s.startswith(("http", "//"))] == [], f"external resources: {p.srcs}"
    # plotly.js inlined exactly once (the installed plotly's bundle), both figures drawn with it
    bundle = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    version = re.search(r"plotly\.js v[\d.]+", bundle[:200]).group(0)
    assert page.count(version) == 1, f"{version} inlined {page.count(version)} times"
    assert bundle[-2000:] in page, "the whole bundle must be inlined for off-line use"
    assert page.count("Plotly.newPlot(") == 2
    assert "first figure" in page and "second figure" in page
    # the prompt, models, caption and link are text, never markup
    assert "<script>alert(" not in page and "<img src=x" not in page and "<i>gpt2</i>" not in page
    assert "<pre>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;/pre&gt;&lt;img src=x" in page
    assert "caption &lt;b&gt;x&lt;/b&gt;" in page
    assert 'href="http://127.0.0.1:7860/?prompt=a&quot;b&lt;c&gt;&amp;tab=window"' in page
    assert '<span class="tok">&lt;script&gt;</span>' in page  # HTML built by figures/ goes in as built


def test_export_without_figures_or_link():
    page = export_html({"tokens": "<div>t</div>"}, "Overview", "p", ["gpt-oss-nano"], "", "c")
    p = parse_html(page)
    assert not p.errors and "Share link" not in page and "Plotly.newPlot(" not in page


def test_launch_serves_plotly_js(server):
    """The tab-to-PNG button needs plotly.js in the page: served from the installed plotly, off-line."""
    import httpx

    head = httpx.get(server["url"] + "config", timeout=30).json()["head"]  # the page adds it to <head>
    m = re.search(r'<script src="(/gradio_api/file=[^"]+plotly\.min\.js)"', head)
    assert m, "the page head does not load plotly.js"
    js = httpx.get(server["url"].rstrip("/") + m.group(1), timeout=30)
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    # the allowed path is that one file: the server does not hand out its own sources
    other = httpx.get(server["url"].rstrip("/") + "/gradio_api/file=" + str(Path(__file__).resolve()), timeout=30)
    assert other.status_code in (403, 404), other.status_code
