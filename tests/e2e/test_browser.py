"""The app as a person uses it, in chromium: the page opens analysed, a typed prompt is analysed on click, every
tab shows its figures (none empty, none with labels cut off), the layer/head sliders redraw the views, a share
link restores the view, the tab PNG, a figure's own PNG and the HTML export download as valid files, and the
export opens off-line. Screenshots of every tab are saved for a person to look at (see conftest.py).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from gptoss_viz.runtime.checkpoints import REPO_ROOT
from gptoss_viz.ui.app import SLOTS, TAB_TITLES

pytestmark = pytest.mark.e2e

PROMPT = ("def moving_average(values, window):\n    total = sum(values[:window])\n    out = [total / window]\n"
          "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
          "        out.append(total / window)\n    return out\n")
TIMEOUT = 120_000  # ms: the first analysis loads both models on a 2-core CPU

# JS: the figures of one slot/tab as the page shows them
PLOTS_JS = """(sel) => [...document.querySelectorAll(sel + ' .js-plotly-plot')].filter(gd => gd.offsetParent !== null)
  .map(gd => ({id: gd.closest('[id]') && gd.closest('.block') ? gd.closest('.block').id : '',
               title: (gd.layout && gd.layout.title && gd.layout.title.text) || '',
               traces: (gd.data || []).length, svg: !!gd.querySelector('.main-svg'),
               notes: ((gd.layout && gd.layout.annotations) || []).length,
               w: gd.offsetWidth, h: gd.offsetHeight}))"""

# JS: text of a figure (titles, tick labels, annotations, legend, colour-bar titles) drawn outside the figure
CLIPPED_JS = """(sel) => {
  const out = [];
  for (const gd of document.querySelectorAll(sel + ' .js-plotly-plot')) {
    if (gd.offsetParent === null) continue;
    const box = gd.getBoundingClientRect();
    const texts = gd.querySelectorAll('.gtitle, .g-xtitle text, .g-ytitle text, .xtick text, .ytick text, '
      + '.annotation-text, .cbtitle text, .colorbar .tick text, .legendtext, .sankey-node text');
    for (const t of texts) {
      const r = t.getBoundingClientRect();
      if (!r.width || !t.textContent.trim()) continue;
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        out.push(`${gd.closest('.block') ? gd.closest('.block').id : '?'}: "${t.textContent.slice(0, 40)}" `
                 + `at ${Math.round(r.left - box.left)},${Math.round(r.top - box.top)} `
                 + `(${Math.round(r.width)}x${Math.round(r.height)}) outside ${Math.round(box.width)}x${Math.round(box.height)}`);
    }
  }
  return out;
}"""


def download(page, locator, path):
    """Click `locator`, save the download it starts at `path`; -> (path, the file name the page suggested)."""
    with page.expect_download(timeout=60_000) as dl:
        locator.click()
    dl.value.save_as(path)
    return path, dl.value.suggested_filename


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (no PIL): the signature, then length, 'IHDR', width, height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: starts with {data[:8]!r}"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, f"first chunk is {kind!r} ({length} bytes), not IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert data.endswith(b"IEND\xaeB`\x82"), "the PNG does not end with its IEND chunk (truncated?)"
    return w, h


@pytest.fixture(scope="module")
def context(browser, artifacts):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context, app_server):
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.errors.append(f"dialog: {d.message}"), d.dismiss()))
    pg.goto(app_server["url"])
    yield pg
    pg.close()


def status(pg) -> str:
    return pg.locator("#status [data-testid=markdown]").inner_text()


def notice(pg) -> str:
    """The notice's text (not the progress overlay Gradio draws over an output while it is computed)."""
    return pg.locator("#notice [data-testid=markdown]").inner_text().strip()


def wait_status(pg, changed_from: str | None = None, timeout=TIMEOUT) -> str:
    """Wait until the status line reports an analysis (different from `changed_from`)."""
    pg.wait_for_function("(old) => { const s = document.querySelector('#status [data-testid=markdown]'); "
                         "return s && /\\d+ tokens/.test(s.innerText) && s.innerText !== old; }",
                         arg=changed_from or "", timeout=timeout)
    return status(pg)


def tokens_in(st: str) -> dict:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(gpt-oss-nano|gpt2-nano): (\d+) tokens", st)}


def open_tab(pg, tab: str):
    pg.get_by_role("tab", name=TAB_TITLES[tab], exact=True).click()
    pg.wait_for_function("(t) => { const p = document.querySelector('#tab-' + t); return p && p.offsetParent; }",
                         arg=tab, timeout=10_000)


def wait_plots(pg, tab: str, title_re: str | None = None, timeout=TIMEOUT) -> list[dict]:
    """Wait until every plot slot of `tab` shows a drawn figure (and, if given, one title matches)."""
    n = len([s for s in SLOTS[tab] if (tab, s) not in (("overview", "tokens"), ("overview", "card"))])
    pg.wait_for_function(
        """([sel, n, re]) => { const gds = [...document.querySelectorAll(sel + ' .js-plotly-plot')]
             .filter(gd => gd.offsetParent !== null && gd.querySelector('.main-svg') && gd.layout);
           return gds.length >= n && (!re || gds.some(gd => new RegExp(re).test(gd.layout.title.text))); }""",
        arg=[f"#tab-{tab}", n, title_re], timeout=timeout)
    return pg.evaluate(PLOTS_JS, f"#tab-{tab}")


def plot_title(pg, slot_id: str) -> str:
    return pg.evaluate("(id) => document.querySelector('#' + id + ' .js-plotly-plot').layout.title.text", slot_id)


def set_slider(pg, name: str, value: int):
    """Drag the slider's handle to `value` and let go (the app redraws on release)."""
    rng = pg.locator(f"#{name} input[type=range]")
    lo, hi = float(rng.get_attribute("min")), float(rng.get_attribute("max"))
    box = rng.bounding_box()
    y = box["y"] + box["height"] / 2
    x_of = lambda v: box["x"] + 8 + (box["width"] - 16) * (v - lo) / (hi - lo)  # noqa: E731 (thumb inset)
    pg.mouse.move(x_of(float(rng.input_value())), y)
    pg.mouse.down()
    pg.mouse.move(x_of(value), y, steps=6)
    pg.mouse.up()
    got = int(float(pg.locator(f"#{name} input[type=number]").input_value()))
    if got != value:  # off by a step from rounding: fix it with the keyboard, as a person would
        rng.focus()
        for _ in range(abs(value - got)):
            rng.press("ArrowRight" if value > got else "ArrowLeft")
        rng.dispatch_event("pointerup")
    assert int(float(pg.locator(f"#{name} input[type=number]").input_value())) == value


def shot(pg, artifacts: Path, name: str):
    path = artifacts / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


# ---------------------------------------------------------------------------------------------------------------

def test_page_opens_with_the_default_prompt_analysed(page, app_server, artifacts):
    st = wait_status(page)
    default = app_server["cfg"].default.prompt
    assert page.locator("#prompt textarea").input_value() == default
    counts = tokens_in(st)
    assert set(counts) == {"gpt-oss-nano", "gpt2-nano"} and counts["gpt-oss-nano"] > 20, st
    wait_plots(page, "overview")
    assert page.locator("#overview-tokens .tok").count() == counts["gpt-oss-nano"] + counts["gpt2-nano"]
    assert page.locator("#overview-card table.archcard tr").count() >= 8
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "page scrolls sideways"
    assert page.errors == [], page.errors


def test_type_a_prompt_and_analyze(page, artifacts):
    before = status(page)
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#analyze").click()
    st = wait_status(page, changed_from=before)
    assert notice(page) == ""
    top_row = page.evaluate("() => [...document.querySelectorAll('#overview-tokens .tokcol > div:first-child .tok')]"
                            ".map(t => t.textContent).join('')")
    # gpt-oss's tokens, in order (spaces aside: the nano tokenizer splits on whitespace and drops it)
    assert re.sub("[ \u2423]", "", top_row).startswith("defmoving_average(values,window):\\n"), top_row[:80]
    plots = wait_plots(page, "overview", title_re=r'^Next token after .\\n. ')  # the prompt ends in a newline
    assert len(plots) == 1 and plots[0]["traces"] == 2, plots  # gpt-oss and GPT-2 bars
    shot(page, artifacts, "tab-overview")
    assert tokens_in(st)["gpt-oss-nano"] > 40


@pytest.mark.parametrize("tab", list(SLOTS))
def test_every_tab_shows_its_figures(page, artifacts, tab):
    open_tab(page, tab)
    plots = wait_plots(page, tab)
    want = [f"{tab}-{s}" for s in SLOTS[tab] if (tab, s) not in (("overview", "tokens"), ("overview", "card"))]
    assert sorted(p["id"] for p in plots) == sorted(want), plots
    for p in plots:
        assert p["svg"] and p["w"] > 250 and p["h"] > 200, f"{p['id']} is not drawn at a usable size: {p}"
        assert p["title"], f"{p['id']} has no title"
        assert p["traces"] > 0, f"{p['id']} is empty: {p}"
    page.wait_for_timeout(300)  # let plotly's resize settle before measuring and the screenshot
    clipped = page.evaluate(CLIPPED_JS, f"#tab-{tab}")
    assert clipped == [], "labels drawn outside their figure:\n" + "\n".join(clipped)
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "page scrolls sideways"
    # the caption says what the tab shows
    assert page.locator(f"#tab-{tab} .caption").first.inner_text().strip()
    print("screenshot:", shot(page, artifacts, f"tab-{tab}"))
    assert page.errors == [], page.errors


def test_layer_and_head_sliders_redraw(page, artifacts):
    open_tab(page, "window")
    assert plot_title(page, "window-pattern").startswith("gpt-oss layer 1 (full) head 0")
    set_slider(page, "layer", 3)
    wait_plots(page, "window", title_re="^gpt-oss layer 3 \\(full\\) head 0")
    set_slider(page, "head", 5)
    wait_plots(page, "window", title_re="^gpt-oss layer 3 \\(full\\) head 5")
    assert plot_title(page, "window-gpt2_pattern").startswith("GPT-2 layer 3 head 5")
    set_slider(page, "layer", 2)
    wait_plots(page, "window", title_re="^gpt-oss layer 2 \\(sliding\\) head 5")
    set_slider(page, "layer", 3)
    wait_plots(page, "window", title_re="^gpt-oss layer 3 \\(full\\) head 5")
    shot(page, artifacts, "tab-window-layer3-head5")
    # the other tabs follow the same selection, without another model run
    before = status(page)
    open_tab(page, "sinks")
    wait_plots(page, "sinks", title_re="layer 3 head 5$")
    open_tab(page, "rope")
    wait_plots(page, "rope", title_re="^gpt-oss: .*layer 3 head 5$")
    assert status(page) == before
    open_tab(page, "window")


def test_tabs_never_show_a_previous_prompt(page):
    """Only the visible tab is redrawn on Analyze; another tab must show the new prompt once opened, never the
    figures of an earlier one."""
    lengths = ("(id) => { const g = document.querySelector('#' + id + ' .js-plotly-plot'); "
               "return g && g._fullData && g._fullData.length ? g._fullData[0].x.length : -1; }")  # decoded data
    open_tab(page, "routing")
    wait_plots(page, "routing")
    before = status(page)
    page.locator("#prompt textarea").fill("A short prompt of a few tokens.")
    page.locator("#analyze").click()
    short = tokens_in(wait_status(page, changed_from=before))["gpt-oss-nano"]
    page.wait_for_function(f"() => ({lengths})('routing-grid') === {short}", timeout=60_000)
    open_tab(page, "sinks")
    page.wait_for_function(f"() => ({lengths})('sinks-per_token') === {short}", timeout=60_000)
    open_tab(page, "overview")
    before = status(page)
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#analyze").click()
    long = tokens_in(wait_status(page, changed_from=before))["gpt-oss-nano"]
    assert long != short
    for tab, slot in (("routing", "grid"), ("sinks", "per_token")):
        open_tab(page, tab)
        page.wait_for_function(f"() => ({lengths})('{tab}-{slot}') === {long}", timeout=60_000)
        wait_plots(page, tab)
    open_tab(page, "window")
    wait_plots(page, "window", title_re="^gpt-oss layer 3 \\(full\\) head 5")


def test_quick_tab_switches_are_not_lost(page):
    """Tabs clicked while the server is busy: the last one opened must still be built (Gradio drops an event
    fired while the same event waits in the queue, unless it is bound with trigger_mode="always_last")."""
    lengths = ("(id) => { const g = document.querySelector('#' + id + ' .js-plotly-plot'); "
               "return g && g._fullData && g._fullData.length ? g._fullData[0].x.length : -1; }")
    open_tab(page, "overview")
    before = status(page)
    page.locator("#prompt textarea").fill("Another prompt, to make every other tab stale again.")
    page.locator("#analyze").click()
    page.get_by_role("tab", name=TAB_TITLES["routing"], exact=True).click()  # queued behind the analysis
    page.get_by_role("tab", name=TAB_TITLES["sinks"], exact=True).click()  # fired while routing's is pending
    n = tokens_in(wait_status(page, changed_from=before))["gpt-oss-nano"]
    page.wait_for_function(f"() => ({lengths})('sinks-per_token') === {n}", timeout=60_000)
    wait_plots(page, "sinks")
    page.locator("#share").click()  # the server's idea of the open tab went to the share link
    page.wait_for_function("() => /tab=sinks/.test(document.querySelector('#share-link textarea, "
                           "#share-link input').value)", timeout=30_000)
    page.locator("#prompt textarea").fill(PROMPT)  # back to the state the next tests expect
    before = status(page)
    page.locator("#analyze").click()
    wait_status(page, changed_from=before)
    open_tab(page, "window")
    wait_plots(page, "window", title_re="^gpt-oss layer 3 \\(full\\) head 5")


def test_share_link_restores_the_view(page, context, artifacts):
    page.locator("#share").click()
    page.wait_for_function("() => /^http.*\\?.*tab=window/.test(document.querySelector('#share-link textarea, "
                           "#share-link input').value)", timeout=30_000)  # (the box may hold an older link)
    url = page.locator("#share-link textarea, #share-link input").first.input_value()
    assert "layer=3" in url and "head=5" in url, url
    assert page.locator("#share-link").bounding_box()["height"] < 160, "a long link must not stretch the row"
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == url, f"the clipboard holds {copied!r}"
    other = context.new_page()
    try:
        other.goto(url)
        st = wait_status(other)
        assert other.locator("#prompt textarea").input_value() == PROMPT
        assert other.get_by_role("tab", selected=True).inner_text().strip() == "Sliding window"
        assert other.locator("#layer input[type=number]").input_value() == "3"
        assert other.locator("#head input[type=number]").input_value() == "5"
        wait_plots(other, "window", title_re="^gpt-oss layer 3 \\(full\\) head 5")
        assert tokens_in(st) == tokens_in(status(page))
        assert notice(other) == ""
        shot(other, artifacts, "share-restored")
    finally:
        other.close()


def test_long_prompt_share_link_and_bad_links(page, context, app_server, artifacts):
    # over the 1500 characters a URL carries, under gpt2-nano's 512 tokens
    long = (REPO_ROOT / "model" / "heldout-slice.txt").read_text(encoding="utf-8")[:1700]
    other = context.new_page()
    try:
        other.goto(app_server["url"])
        before = wait_status(other)
        other.locator("#prompt textarea").fill(long)
        other.locator("#analyze").click()
        wait_status(other, changed_from=before)
        other.locator("#share").click()
        other.wait_for_function("() => /pid=[0-9a-f]{64}/.test(document.querySelector('#share-link textarea, "
                                "#share-link input').value)", timeout=30_000)
        url = other.locator("#share-link textarea, #share-link input").first.input_value()
        assert "prompt=" not in url and len(url) < 400, url
        other.goto(url)
        wait_status(other)
        assert other.locator("#prompt textarea").input_value() == long
        # a tampered link: the app falls back, says so, and still analyses the default prompt
        other.goto(app_server["url"] + "?tab=bogus&layer=abc&gptoss=evil%2Fmodel&pid=..%2F..%2Fetc%2Fpasswd")
        wait_status(other)
        said = notice(other)
        for frag in ("unknown or expired", "unknown tab", "invalid layer", "not offered here"):
            assert frag in said, f"notice should say {frag!r}: {said!r}"
        assert other.locator("#prompt textarea").input_value() == app_server["cfg"].default.prompt
        shot(other, artifacts, "bad-link-notice")
    finally:
        other.close()


def test_bad_input_shows_a_notice_and_the_page_keeps_working(page, artifacts):
    open_tab(page, "overview")
    before = status(page)
    page.locator("#prompt textarea").fill("   ")
    page.locator("#analyze").click()
    page.wait_for_function("() => /empty prompt/.test(document.querySelector('#notice [data-testid=markdown]')"
                           ".innerText)",
                           timeout=30_000)
    assert status(page) == before, "a refused prompt must leave the last analysis on screen"
    page.locator("#prompt textarea").fill('<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>')
    page.locator("#analyze").click()
    wait_status(page, changed_from=before)
    assert page.evaluate("() => window.__pwned === undefined"), "markup in the prompt ran"
    top_row = page.evaluate("() => [...document.querySelectorAll('#overview-tokens .tokcol > div:first-child .tok')]"
                            ".map(t => t.textContent).join('')")
    assert re.sub("[ \u2423]", "", top_row).startswith("<imgsrc=x"), top_row  # shown as text, not markup
    assert page.locator("#overview-tokens img, #overview-tokens script").count() == 0
    # a Hub model while off-line: a readable notice naming the model and how to get it
    page.locator("#gptoss input").click()
    page.get_by_role("option", name="openai/gpt-oss-20b").click()
    page.locator("#analyze").click()
    page.wait_for_function("() => /cannot load/.test(document.querySelector('#notice [data-testid=markdown]')"
                           ".innerText)", timeout=60_000)
    said = notice(page)
    assert "openai/gpt-oss-20b" in said and "hf download openai/gpt-oss-20b" in said, said
    assert "&quot;" not in said and "&#x27;" not in said, said
    shot(page, artifacts, "offline-hub-notice")
    page.locator("#gptoss input").click()
    page.get_by_role("option", name="gpt-oss-nano").click()
    page.locator("#prompt textarea").fill(PROMPT)
    before = status(page)
    page.locator("#analyze").click()
    wait_status(page, changed_from=before)
    assert notice(page) == ""


def test_download_tab_png(page, artifacts):
    open_tab(page, "window")
    wait_plots(page, "window")
    box = page.evaluate("""() => { const rs = [...document.querySelectorAll('#tab-window .js-plotly-plot')]
        .filter(p => p.offsetParent !== null).map(p => p.getBoundingClientRect());
        return [Math.max(...rs.map(r => r.right)) - Math.min(...rs.map(r => r.left)),
                Math.max(...rs.map(r => r.bottom)) - Math.min(...rs.map(r => r.top))]; }""")
    path, name = download(page, page.locator("#tab-png"), artifacts / "download-tab-window.png")
    assert name.endswith(".png")
    w, h = png_size(path.read_bytes())
    assert abs(w - box[0]) <= 2 and abs(h - box[1]) <= 2, f"PNG is {w}x{h}, the tab's figures {box}"
    assert path.stat().st_size > 20_000, "a PNG of six figures should not be this small"
    assert page.errors == [], page.errors


def test_download_one_figure_png_from_its_modebar(page, artifacts):
    open_tab(page, "window")
    plot = page.locator("#window-pattern .js-plotly-plot")
    plot.hover()
    btn = page.locator('#window-pattern .modebar-btn[data-title^="Download plot as a"]')
    btn.wait_for(state="visible", timeout=10_000)
    path, _ = download(page, btn, artifacts / "download-window-pattern.png")
    w, h = png_size(path.read_bytes())
    assert w > 300 and h > 300, (w, h)


def test_export_html_opens_offline(page, browser, artifacts):
    open_tab(page, "window")
    wait_plots(page, "window", title_re="head 5")
    page.locator("#export").click()
    link = page.locator("#export-file a[download]")
    link.wait_for(state="visible", timeout=60_000)
    path, _ = download(page, link, artifacts / "export-window.html")
    html = path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<h1>gptoss-viz: Sliding window</h1>" in html
    assert "def moving_average(values, window):" in html  # the prompt, as text
    assert html.count("Plotly.newPlot(") == len(SLOTS["window"]), "one drawn figure per slot"
    assert "gpt-oss layer 3 (full) head 5" in html, "the export shows the selected layer and head"
    assert "Share link" in html and "tab=window" in html
    assert not re.search(r'<script[^>]+src="(https?:)?//', html), "the export must not fetch scripts"
    # open it with the network off: every figure must still draw
    ctx = browser.new_context(offline=True, viewport={"width": 1300, "height": 900})
    requests = []
    ctx.route("**/*", lambda route: (requests.append(route.request.url), route.abort())
              if not route.request.url.startswith(("file:", "data:")) else route.continue_())
    try:
        off = ctx.new_page()
        errors = []
        off.on("pageerror", lambda e: errors.append(str(e)))
        off.goto(path.resolve().as_uri())
        off.wait_for_function("(n) => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n",
                              arg=len(SLOTS["window"]), timeout=60_000)
        titles = off.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(g => g.layout.title.text)")
        assert any(t.startswith("gpt-oss layer 3 (full) head 5") for t in titles), titles
        assert errors == [], errors
        assert requests == [], f"the export asked the network for {requests}"
        assert off.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), \
            "the export scrolls sideways (a long share link?)"
        off.screenshot(path=str(artifacts / "export-window-offline.png"), full_page=True)
    finally:
        ctx.close()


def test_example_prompts_and_chat_mode(context, app_server, artifacts):
    """Picking an example fills the prompt (and the chat toggle); the harmony rendering adds gpt-oss tokens."""
    examples = json.loads((REPO_ROOT / "assets" / "examples.json").read_text(encoding="utf-8"))
    chat = next(e for e in examples if e.get("chat"))
    pg = context.new_page()
    try:
        pg.goto(app_server["url"])
        before = wait_status(pg)
        pg.locator("#examples input").click()
        pg.get_by_role("option", name=chat["name"]).click()
        pg.wait_for_function("(p) => document.querySelector('#prompt textarea').value === p", arg=chat["prompt"],
                             timeout=30_000)
        assert pg.locator("#chat input[type=checkbox]").is_checked()
        pg.locator("#analyze").click()
        counts = tokens_in(wait_status(pg, changed_from=before))
        assert counts["gpt-oss-nano"] > counts["gpt2-nano"] + 20, counts  # system + user turn around the text
        shot(pg, artifacts, "example-chat")
    finally:
        pg.close()


def test_narrow_screen_does_not_overflow(context, app_server, artifacts):
    """A phone-width window: the layout stacks, nothing scrolls sideways."""
    pg = context.new_page()
    try:
        pg.set_viewport_size({"width": 420, "height": 900})
        pg.goto(app_server["url"])
        wait_status(pg)
        wait_plots(pg, "overview")
        pg.wait_for_timeout(300)
        assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), \
            f"page is {pg.evaluate('() => document.documentElement.scrollWidth')} px wide in a 420 px window"
        shot(pg, artifacts, "narrow-overview")
    finally:
        pg.close()
