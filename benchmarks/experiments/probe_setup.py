"""What the 20b probes share: `PROBE.py OUT.json [LENGTHS]` -> the output path, the random 20b model (or `size`'s)
built in GPU memory (seed 0, its kernels prepared as load_model does), a results dict, and random prompt ids for
each length (seed 0, drawn in order); the MoE kernels' GPU time inside a forward; variants of the model timed
in turn (`alternate`); and CUDA-graph capture and replay timing (`capture`, `replay_ms`). PROBE_ROOT in the
environment: import gptoss_viz from that checkout instead (another version of the code, for A/B runs such as
toolchain_probe.py's `after=PROBE_ROOT=/tmp/patched`)."""

import os
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(os.environ.get("PROBE_ROOT") or Path(__file__).resolve().parents[2])
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def size_arg(default: str) -> str:
    """`--size SIZE` taken out of sys.argv (before probe_setup reads the lengths from it), else `default`."""
    if "--size" not in sys.argv:
        return default
    i = sys.argv.index("--size")
    size = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return size


def probe_setup(default_lengths: list[int], size: str = "20b"):
    """(out, cfg, model, R, prompts): prompts yields (T, ids [T] on the GPU) for each length asked for."""
    out = Path(sys.argv[1])
    lengths = [int(t) for t in sys.argv[2:]] or default_lengths
    cfg = gptoss_config(size)
    model = random_packed_model(cfg, "cuda")
    model.prepare_kernels()
    R = {"gpu": torch.cuda.get_device_name(), "lengths": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    prompts = ((T, torch.randint(0, 8000, (T,), device="cuda", generator=g)) for T in lengths)
    return out, cfg, model, R, prompts


def moe_ms(model, ids) -> float:
    """Summed GPU ms of the Hopper MoE kernels in one forward (mean of 3, torch.profiler)."""
    model(ids)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
    return sum(ev.device_time for ev in prof.events() if ev.device_type.name == "CUDA"
               and "moe_hopper" in ev.name) / 3 / 1e3


def alternate(model, ids, variants: dict, row: dict, rounds: int = 3) -> dict:
    """Each variant (name -> a function that puts it in place) in turn, `rounds` times: the MoE kernels' GPU ms
    (moe_ms) and the forward's (CUDA events, median of 5) appended to row[name]; row["logits_equal"]: whether
    every variant gave the same logits, bit for bit."""
    from gpu_gptoss import gpu_ms

    logits = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, apply in variants.items():
                apply()
                row.setdefault(name, {"moe_ms": [], "forward_ms": []})
                row[name]["moe_ms"].append(moe_ms(model, ids))
                row[name]["forward_ms"].append(gpu_ms(lambda: model(ids), warmup=1))
                logits[name] = model(ids)
    first = next(iter(logits.values()))
    row["logits_equal"] = all(torch.equal(first, v) for v in logits.values())
    return row


def capturable(model) -> None:
    """Let `model` be captured in a CUDA graph: gptoss.check_ids (which waits for the device) and the fast path's
    deferred range check (a copy to the host and an event, read at the forward's end) skipped; ids are the probes'
    own. (rope() needs nothing since GptOss keeps its tables: the warm-up before a capture makes the table, and the
    captured forward only slices it.)"""
    from gptoss_viz.runtime import gptoss as gptoss_mod

    gptoss_mod.check_ids = lambda *a, **k: None
    if hasattr(gptoss_mod, "defer_range_check"):  # (PROBE_ROOT's code may predate it)
        gptoss_mod.defer_range_check = lambda *a, **k: None


def capture(fn):
    """(graph, output): fn run twice on a side stream (allocator and kernel warm-up), then captured once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def replay_ms(graph, n: int = 7) -> float:
    """Median of n replays of graph, each timed by CUDA events (ms)."""
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)
