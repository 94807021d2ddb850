"""benchmarks/gpu_gptoss.py's Clocks: the GPU clock and power recorded next to each timed block, from nvidia-smi's
samples stamped inside the block only. Runs on the CPU with a stand-in nvidia-smi."""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_gptoss  # noqa: E402

FAKE = '''#!{python}
import datetime, sys, time
stamp = lambda t: t.strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
# two samples stamped before the block (the first is the one the block waits for), then one every 20 ms
for _ in range(2):
    print(stamp(datetime.datetime.now() - datetime.timedelta(seconds=5)) + ", 999, 50.0", flush=True)
print("not a sample", flush=True)
while True:
    time.sleep(0.02)
    print(stamp(datetime.datetime.now()) + ", 1680, 690.5", flush=True)
'''


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE.format(python=sys.executable))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(gpu_gptoss, "_nvml_id", lambda: "0")
    return smi


def test_clocks_keeps_only_samples_inside_the_block(fake_smi):
    with gpu_gptoss.Clocks() as clocks:
        time.sleep(0.3)
    s = clocks.summary()
    assert s["sm_mhz_median"] == 1680 and s["sm_mhz_min"] == 1680  # the earlier 999 MHz sample is left out
    assert s["watts_median"] == 690.5
    assert 3 <= s["samples"] <= 16


def test_clocks_without_nvidia_smi_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    monkeypatch.setattr(gpu_gptoss, "_nvml_id", lambda: "0")
    with gpu_gptoss.Clocks() as clocks:
        pass
    assert "nvidia-smi" in clocks.summary()["error"]


def test_clock_note_in_the_summary_line():
    row = {"forward_clocks": {"sm_mhz_median": 1680.0, "watts_median": 690.4}, "forward_from_idle_ms": 16.94}
    assert gpu_gptoss._clock_note(row, "forward") == " | 1680 MHz, 690 W; from idle 16.9 ms"
    assert gpu_gptoss._clock_note({"forward_clocks": {"error": "no samples"}}, "forward") == ""
    row["forward_host_launch_ms"] = 12.34
    assert gpu_gptoss._clock_note(row, "forward") == " | 1680 MHz, 690 W; from idle 16.9 ms; host launch 12.3 ms"


def test_alternate_ms_takes_turns_and_reverses_the_order(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu_gptoss, "event_ms", lambda fn: fn())
    monkeypatch.setattr(gpu_gptoss.torch.cuda, "synchronize", lambda: None)
    fns = {"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 10.0}
    t = gpu_gptoss.alternate_ms(fns, rounds=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then a round each way in turn
    assert t == {"a": [2.0] * 4, "b": [10.0] * 4}
    r = gpu_gptoss.paired_ratio([10.0, 12.0, 30.0], [2.0, 3.0, 3.0])
    assert r["median_ratio"] == 5.0 and r["ratio_of_medians"] == 4.0


def test_paired_line_in_the_summary():
    row = {"T": 1024, "ours_ms": [19.0] * 11, "hf_ms": [86.0] * 11, "ours_median_ms": 19.04, "hf_median_ms": 86.31,
           "median_ratio": 4.534, "ratio_of_medians": 4.533, "clocks": {"sm_mhz_median": 1980.0, "watts_median": 412.2}}
    assert gpu_gptoss._paired_line(row) == (
        "in turns T=1024: ours 19.0 ms, transformers 86.3 ms: 4.53x (median of 11 rounds' ratios; 4.53x of the "
        "medians) | 1980 MHz, 412 W")


def test_trace_pairs_alternates_forward_and_trace(monkeypatch):
    import types

    import gptoss_viz.trace

    calls = []
    monkeypatch.setattr(gpu_gptoss.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(gptoss_viz.trace, "run_trace",
                        lambda model, text: calls.append("trace") or types.SimpleNamespace(seconds=0.025))
    fwd, trace, wall = gpu_gptoss.trace_pairs(lambda ids: calls.append("forward"), None, 3)
    assert calls == ["forward", "trace"] * 3
    assert len(fwd) == len(wall) == 3 and all(t >= 0 for t in fwd + wall)
    assert trace == [25.0] * 3  # run_trace's own clock, in ms
