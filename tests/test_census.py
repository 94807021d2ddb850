"""Routing census: parsing edge cases, aggregates equal the sum of per-prompt traces, torchrun 2 ranks = 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptoss_viz import load_model
from gptoss_viz.analysis import routing
from gptoss_viz.census import ALL, CensusInputError, parse_prompts, run_census, to_csv, to_json
from gptoss_viz.runtime.checkpoints import REPO_ROOT
from gptoss_viz.trace import run_trace

PROMPTS = ["def add(a, b):\n    return a + b", "The cat sat on the mat.", "import os\nprint(os.getcwd())",
           "Sliding windows bound the cost of attention.", "x = [i * i for i in range(10)]",
           "An attention sink takes the probability a head does not need.", "for k, v in d.items(): pass"]


@pytest.fixture(scope="module")
def nano():
    return load_model("gpt-oss-nano", dtype=torch.float32), load_model("gpt2-nano", dtype=torch.float32)


# ---- parsing -------------------------------------------------------------------------------------------------

def test_txt_with_bom_crlf_and_blank_lines():
    r = parse_prompts("\ufeffone\r\ntwo\r\n\r\nthree\rfour".encode("utf-8"), "p.txt")
    assert [p.text for p in r.prompts] == ["one", "two", "three", "four"]
    assert r.skipped == {"empty lines": 1}


def test_jsonl_bad_lines_are_skipped_and_counted():
    data = b'{"text": "a", "label": "x"}\nnot json\n{"prompt": "b"}\n{"other": 1}\n[1, 2]\n{"text": "c", "label": {"d": 1}}\n'
    r = parse_prompts(data, "p.jsonl")
    assert [(p.text, p.label) for p in r.prompts] == [("a", "x"), ("b", "")]
    assert r.skipped == {"lines that are not JSON": 1, "JSON lines without a text or prompt string": 2,
                         "JSON lines whose label is not a plain value": 1}
    assert "skipped" in r.summary()


def test_huge_line_is_skipped_and_counted():
    r = parse_prompts(("short\n" + "x" * 30_000 + "\n").encode(), "p.txt")
    assert [p.text for p in r.prompts] == ["short"]
    assert sum(r.skipped.values()) == 1 and "over" in next(iter(r.skipped))


def test_csv_columns_labels_and_bad_rows():
    data = 'id,Text,label\n1,"hello, world",greet\n2,bye\n3,"multi\nline",x\n'.encode()
    r = parse_prompts(data, "p.csv")
    assert [(p.text, p.label) for p in r.prompts] == [("hello, world", "greet"), ("multi\nline", "x")]
    assert r.skipped == {"CSV rows with the wrong number of columns": 1}
    with pytest.raises(CensusInputError, match="no 'text' or 'prompt' column"):
        parse_prompts(b"a,b\n1,2\n", "p.csv")


@pytest.mark.parametrize("data,name,match", [
    (b"", "p.txt", "no usable prompt"),
    (b"\n\n  \n", "p.txt", "no usable prompt"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "p.txt", "binary"),
    (b"\xff\xfe\xfa bad", "p.txt", "not UTF-8"),
    (b"hello", "p.exe", "only .txt, .jsonl and .csv"),
    (b"hello", "../../etc/passwd", "only .txt"),
    (b"x\n" * 10, "p.txt", None),
])
def test_refused_files(data, name, match):
    if match is None:
        assert len(parse_prompts(data, name).prompts) == 10
        return
    with pytest.raises(CensusInputError, match=match):
        parse_prompts(data, name)


def test_limits_are_enforced_not_truncated():
    with pytest.raises(CensusInputError, match="limit is 5"):
        parse_prompts(b"a\n" * 6, "p.txt", max_prompts=5)
    with pytest.raises(CensusInputError, match="MB"):
        parse_prompts(b"a" * 2000, "p.txt", max_bytes=1000)


# ---- statistics ----------------------------------------------------------------------------------------------

def test_aggregate_equals_sum_of_per_prompt_traces(nano):
    oss, gpt2 = nano
    from gptoss_viz.census import Prompt

    prompts = [Prompt(t, "code" if "(" in t or "=" in t else "prose", i) for i, t in enumerate(PROMPTS)]
    res = run_census(oss, prompts, batch_tokens=48)  # several batches, several prompts per batch (padded)
    traces = [run_trace(oss, p.text) for p in prompts]
    s = res.stats[ALL]
    assert s.prompts == len(prompts) and s.tokens == sum(t.T for t in traces)
    assert (s.expert_count == sum(routing.expert_load(t) for t in traces)).all()
    np.testing.assert_allclose(s.sink_sum, sum(t.sink_prob.sum(-1) for t in traces), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.entropy_sum, sum(routing.router_entropy(t).sum(-1) for t in traces), rtol=1e-4)
    code = res.stats["code"]
    assert code.prompts == sum(p.label == "code" for p in prompts)
    assert (code.expert_count + res.stats["prose"].expert_count == s.expert_count).all()
    # co-activation diagonal counts tokens routed to each expert
    for layer in range(s.co.shape[0]):
        assert (np.diag(s.co[layer]) == s.expert_count[layer]).all()

    g = run_census(gpt2, prompts, batch_tokens=48).stats[ALL]
    gtraces = [run_trace(gpt2, p.text) for p in prompts]
    np.testing.assert_allclose(g.first_sum, sum(t.first_token_mass * (t.T - 1) for t in gtraces), rtol=1e-4,
                               atol=1e-5)


def test_reports_and_cancel(nano):
    oss, _ = nano
    from gptoss_viz.census import Prompt

    prompts = [Prompt(t, "", i) for i, t in enumerate(PROMPTS)]
    res = run_census(oss, prompts, batch_tokens=32, cancel=iter([False, True]).__next__)
    assert "prompts not run: cancelled" in res.skipped
    assert res.stats[ALL].prompts + res.skipped["prompts not run: cancelled"] == len(prompts)
    full = run_census(oss, prompts)
    j = to_json([full])
    m = j["models"]["gpt-oss-nano"]["labels"][ALL]
    assert np.allclose(np.array(m["expert_share"]).sum(1), 1.0)
    assert len(m["top_tokens"]) > 0
    import csv
    import io

    rows = list(csv.reader(io.StringIO(to_csv([full]))))
    L, E = full.stats[ALL].expert_count.shape
    H = full.stats[ALL].sink_sum.shape[1]
    assert len(rows) == 1 + 2 * (L * E + L * H)  # (all) and the empty label, experts then heads


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": t, "label": "a" if i % 2 else "b"})
                                 for i, t in enumerate(PROMPTS)), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun gives each rank one thread: match it
    args = ["census", str(prompts), "--model", "gpt-oss-nano", "--gpt2", "gpt2-nano", "--batch-tokens", "40"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    proc = subprocess.run([sys.executable, "-m", "gptoss_viz", *args, "--out", str(one)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --standalone: the rendezvous binds a free port itself (no window between picking a port and using it)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "gptoss_viz"]
    proc = subprocess.run([*torchrun, *args, "--out", str(two)], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    # the ranks' own messages come before torchrun's summary of the failure: show both
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-1500:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a == b, "two ranks and one process disagree"
    assert a["models"]["gpt-oss-nano"]["labels"][ALL]["prompts"] == len(PROMPTS)
