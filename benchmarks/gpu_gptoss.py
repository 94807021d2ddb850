"""GPU benchmark of the gpt-oss runtime on full-size random weights (issue 6): memory, speed against the hardware
bound, the cost of tracing, and transformers' GptOssForCausalLM on the same weights in the same run.

    python benchmarks/gpu_gptoss.py --out benchmarks/results/gpu_gptoss.json

Phases (each guarded, results written after each so a cut-off run keeps what it measured):
  ceilings  measured bf16 matmul rate and device-to-device copy bandwidth of this GPU (the bounds use both these
            and SPEC.md's datasheet numbers)
  gen20b    write a random gpt-oss-20b checkpoint in Hub format to disk (benchmarks/make_random_gptoss.py)
  ours20b   load it (host-memory peak sampled), then per prompt length: un-instrumented forward (fast path),
            the "lean" trace (sink probabilities, routing, residuals, rotated q/k on every layer: all on the fast
            path), the full trace of gptoss_viz.trace.run_trace (which also reduces every layer's attention
            pattern, so attention takes the reference path), the reference path alone at 1024, and one MoE layer
            and one attention layer in isolation
  oss120b   gpt-oss-120b built directly in GPU memory (65 GB does not fit the disk next to 20b): forward time
            and trace memory
  disk120b  (not in the default phases; needs ~66 GB of free disk) gpt-oss-120b written to disk in the Hub's
            format (15 shards), loaded by load_model as a user would (host memory sampled, GPU peak of the load),
            then the 1024-token forward and traces; the checkpoint is deleted afterwards
  hf20b     transformers on the same 20b checkpoint: eager attention with output_attentions and router logits,
            as an analysis user would run it (MXFP4 dequantized to bf16 at load: transformers' kernels for
            packed MXFP4 need the `kernels` package and the Hub); then, at 128 and 1024 tokens, our forward and
            theirs in turns in one process, both models on the card (`paired`)

Timings are CUDA-event medians after warm-up, the calls back to back (and, at 1024 tokens, also each after a
second of idle GPU: `_from_idle_ms`); the GPU's SM clock and power while the forwards were timed are recorded next
to them (`_clocks`). The ratios the targets are about are also measured with the two sides in turns (the full trace
and the forward: `full_trace_over_forward_paired`; ours and transformers: hf20b's `paired`), since the host's
speed drifts over seconds and a series timed after the other can meet another state. Memory is
torch.cuda.max_memory_allocated around one call.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gptoss_viz import load_model  # noqa: E402
from gptoss_viz.runtime.random_checkpoint import gptoss_config, plan_bytes, random_packed_model, tensor_plan  # noqa
from gptoss_viz.runtime.tokenizer import Encoded  # noqa: E402

log = logging.getLogger("gpu_gptoss")
GiB = 1 << 30
SPEC_TFLOPS = 989e12  # H100/H200 SXM dense bf16 (SPEC.md)
SPEC_BW = {"H100": 3.35e12, "H200": 4.8e12}
DEV = "cuda"  # the GPU (a module constant so the script's logic can be dry-run on the CPU)
KEEP_AT = 512  # prompt length at which our logits are kept to compare with transformers
PAIRED_TRACES = 7  # full traces timed in turns with the forward, per length (full_trace_over_forward_paired)
PAIR_AT = (128, 1024)  # lengths at which ours and transformers run in turns in one process (phase_hf20b)
PAIR_ROUNDS = 11


# ---------------------------------------------------------------------------------------------------------------
# Measuring

REPS_SHORT = 11  # timed calls (median) up to 1024 tokens, both sides: there the host's drift shows (sixteenth session)


def event_ms(fn) -> float:
    """CUDA-event time of one fn() in ms."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def gpu_ms(fn, warmup: int = 2, reps: int = 5) -> float:
    """Median CUDA-event time of fn() in ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median(event_ms(fn) for _ in range(reps))


def idle_ms(fn, reps: int = 5, pause_s: float = 1.0) -> float:
    """Median CUDA-event time of fn() in ms, each call after `pause_s` with the GPU idle: one request at a time, as
    an analysis user sends them, where gpu_ms's calls back to back hold the GPU under load (and its clock down)."""
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        time.sleep(pause_s)
        times.append(event_ms(fn))
    return statistics.median(times)


def host_launch_ms(fn, reps: int = 5) -> float:
    """Median host ms from calling fn() to its return, each call on a synchronised (idle) GPU: how long the host
    takes to launch it. Where that is close to fn's CUDA-event time, the host set that time and the GPU waited for
    it; these machines' hosts drift between a fast and a slow state for seconds at a time (RESULTS.md, twenty-first
    session), so each row says which one it met."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def alternate_ms(fns: dict, rounds: int, warmup: int = 1) -> dict:
    """CUDA-event ms of each of `fns` (name -> callable), called in turns, `rounds` times each: the host's and the
    GPU's drifting states (RESULTS.md, twenty-first session) then fall on all of them alike, where timing one after
    the other's whole series lets a drift between the two series decide their ratio. The order within a round is
    reversed every other round, so neither always runs right after the other."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    torch.cuda.synchronize()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(event_ms(fns[n]))
    return times


def paired_ratio(num: list, den: list) -> dict:
    """Medians of two alternated series and of their round-by-round ratio num / den."""
    return {"median_ratio": statistics.median(a / b for a, b in zip(num, den)),
            "ratio_of_medians": statistics.median(num) / statistics.median(den)}


def trace_pairs(model, ids: torch.Tensor, n: int) -> tuple[list, list, list]:
    """n forwards and n full traces in turns (model.tokenizer must give `ids` for run_trace's text), both timed on
    the host from a synchronised GPU to the end of their work (the forward's with a synchronise, the trace by
    run_trace's own clock): the full trace's cost over the forward with the host's drift on both. Returns the
    forwards' ms, the traces' ms, and each run_trace call's whole wall ms (its copies to the host too)."""
    from gptoss_viz.trace import run_trace

    fwd, trace, wall = [], [], []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(ids)
        torch.cuda.synchronize()
        fwd.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        trace.append(run_trace(model, "x").seconds * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return fwd, trace, wall


def _nvml_id() -> str:
    """nvidia-smi's name for the current CUDA device: its PCI bus id where torch gives it (CUDA's numbering differs
    from nvidia-smi's under CUDA_VISIBLE_DEVICES), else the index."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return str(torch.cuda.current_device())
    return f"{getattr(props, 'pci_domain_id', 0):08X}:{bus:02X}:{getattr(props, 'pci_device_id', 0):02X}.0"


class Clocks:
    """The GPU's SM clock (MHz) and power draw (W) while the block runs, sampled by nvidia-smi every 20 ms (the
    block starts after its first sample, and only samples stamped inside it count; power is NVML's running average).
    The same kernels take longer at a lower clock, and under load the GPU lowers it (an H200 went from 1980 MHz idle
    to ~1700 and, at its 700 W cap, 1500-1700: experiments/gap_probe.py). `summary()`: medians, minimum and sample
    count, or why there are none."""

    def __init__(self):
        self.rows: list[tuple[float, float]] = []
        self.error = None
        self._proc = None

    def __enter__(self):
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={_nvml_id()}", "--query-gpu=timestamp,clocks.sm,power.draw",
                 "--format=csv,noheader,nounits", "-lms", "20"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
            self._proc.stdout.readline()  # its first sample: it has started
        except OSError as e:
            self.error = f"no nvidia-smi: {e}"
        self.t0 = datetime.datetime.now()
        return self

    def __exit__(self, *exc):
        t1 = datetime.datetime.now()
        if self._proc is None:
            return
        self._proc.terminate()
        for line in self._proc.communicate()[0].splitlines():
            try:
                stamp, mhz, watts = (v.strip() for v in line.split(","))
                when = datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f")
                if self.t0 <= when <= t1:
                    self.rows.append((float(mhz), float(watts)))
            except ValueError:
                continue

    def summary(self) -> dict:
        if not self.rows:
            return {"error": self.error or "no samples inside the timed block"}
        return {"sm_mhz_median": statistics.median(r[0] for r in self.rows),
                "sm_mhz_min": min(r[0] for r in self.rows),
                "watts_median": statistics.median(r[1] for r in self.rows), "samples": len(self.rows)}


def peak_bytes(fn) -> int:
    """Peak GPU memory allocated during one fn() (everything resident counted: weights included)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated()


class HostMemory:
    """Samples this process's resident memory (anonymous = heap, file = mapped checkpoint pages) every 10 ms."""

    def __init__(self):
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) * 1024
        return out

    def _run(self):
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.01)

    def __enter__(self):
        self.start = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class IdsOnly:
    """Tokenizer stand-in so run_trace sees exactly the token ids we choose (random weights: the text is moot)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def encode_with_offsets(self, text: str) -> Encoded:
        return Encoded(text, list(self.ids), [(0, 0)] * len(self.ids), ["."] * len(self.ids))

    def decode(self, ids) -> str:
        return "."


def prefill_flops(cfg, T: int) -> float:
    """Matmul FLOPs of one prefill: 2 per active weight per token, the lm_head, and q.k + p.v over the allowed
    (query, key) pairs of each layer (causal; sliding layers see at most `sliding_window` keys)."""
    f = 2 * T * cfg.parameter_counts()["active"] + 2 * T * cfg.vocab_size * cfg.hidden_size
    for kind in cfg.layer_types:
        W = cfg.sliding_window if kind == "sliding_attention" else T
        pairs = sum(min(i + 1, W) for i in range(T))
        f += 4 * cfg.num_attention_heads * cfg.head_dim * pairs
    return float(f)


def bound_ms(cfg, T: int, tflops: float, bw: float) -> dict:
    flops, nbytes = prefill_flops(cfg, T), plan_bytes(tensor_plan(cfg))
    return {"flops": flops, "weight_bytes": nbytes, "compute_ms": flops / tflops * 1e3,
            "bandwidth_ms": nbytes / bw * 1e3, "bound_ms": max(flops / tflops, nbytes / bw) * 1e3}


# ---------------------------------------------------------------------------------------------------------------
# Phases

def phase_env(R: dict) -> None:
    p = torch.cuda.get_device_properties(0)
    import triton
    from gptoss_viz.runtime.kernels import launch, verify

    R["env"] = {"gpu": p.name, "gpu_memory_bytes": p.total_memory, "sms": p.multi_processor_count,
                "date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__,
                # on a Triton the GPU tests did not run on, launches go through its JIT (more host time a forward)
                # and the Hopper MoE kernels run only after their self-test (kernels/verify.py)
                "triton_verified": verify.verified(triton.__version__), "direct_launches": launch.DIRECT}
    try:
        import transformers
        R["env"]["transformers"] = transformers.__version__
    except ImportError:
        pass


def phase_ceilings(R: dict) -> None:
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    ms = gpu_ms(lambda: a @ b, warmup=3, reps=10)
    x = torch.randn(1 << 30, device=DEV, dtype=torch.bfloat16)  # 2 GiB
    y = torch.empty_like(x)
    ms_copy = gpu_ms(lambda: y.copy_(x), warmup=2, reps=10)
    R["ceilings"] = {"matmul_tflops": 2 * 8192 ** 3 / ms * 1e-9, "copy_bytes_per_s": 2 * x.numel() * 2 / ms_copy * 1e3}
    name = R["env"]["gpu"]
    R["ceilings"]["spec_bytes_per_s"] = SPEC_BW["H200" if "H200" in name else "H100"]


def phase_gen20b(R: dict, ckpt: Path) -> None:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_random_gptoss.py"), "--size", "20b",
                          "--out", str(ckpt), "--device", "cuda"], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    R["gen20b"] = {"seconds": time.perf_counter() - t0, "files": sorted(p.name for p in ckpt.iterdir()),
                   "bytes_on_disk": sum(p.stat().st_size for p in ckpt.iterdir())}


def lean_names(L: int) -> list[str]:
    names = []
    for i in range(L):
        names += [f"blocks.{i}.attn.hook_q_rot", f"blocks.{i}.attn.hook_k_rot", f"blocks.{i}.attn.hook_sink_prob",
                  f"blocks.{i}.mlp.hook_router_logits", f"blocks.{i}.mlp.hook_expert_idx",
                  f"blocks.{i}.mlp.hook_expert_weight", f"blocks.{i}.hook_resid_post"]
    return names


def measure_model(model, cfg, lengths, R_model: dict, ceil: dict, deadline: float, reference_at=1024,
                  keep_logits_at=None, trace_reps: int = 5) -> dict:
    """Per prompt length: forward, lean trace, full trace (time and peak memory); returns kept logits."""
    from gptoss_viz.trace import run_trace

    kept = {}
    g = torch.Generator(device=DEV).manual_seed(0)
    ids_all = torch.randint(0, 8000, (max(lengths),), device=DEV, generator=g)
    R_model["weights_bytes_on_gpu"] = torch.cuda.memory_allocated()
    names = lean_names(cfg.num_hidden_layers)
    tok = model.tokenizer
    for T in lengths:
        if time.monotonic() > deadline:
            R_model.setdefault("skipped", []).append(f"T={T}: out of time")
            continue
        ids = ids_all[:T]
        row = {"T": T}
        with torch.inference_mode():
            model.use_kernels = True
            with Clocks() as clocks:  # (up to 1024 tokens the host sets the time and drifts: more calls)
                row["forward_ms"] = gpu_ms(lambda: model(ids), reps=REPS_SHORT if T <= 1024 else 5)
            row["forward_clocks"] = clocks.summary()
            row["forward_host_launch_ms"] = host_launch_ms(lambda: model(ids))
            if T == 1024:
                row["forward_from_idle_ms"] = idle_ms(lambda: model(ids))
            row["forward_path"] = model.last_path
            row["forward_peak_bytes"] = peak_bytes(lambda: model(ids))
            row["lean_trace_ms"] = gpu_ms(lambda: model.run_with_cache(ids, names), warmup=1, reps=3)
            row["lean_trace_peak_bytes"] = peak_bytes(lambda: model.run_with_cache(ids, names))
            row["lean_trace_path"] = model.last_path
            model.tokenizer = IdsOnly(ids.tolist())
            try:
                # the first warms up; run_trace times itself on the host, whose load varies: a median of several
                traces = [run_trace(model, "x") for _ in range(trace_reps + 1)]
                row["full_trace_runs_ms"] = [round(t.seconds * 1e3, 2) for t in traces[1:]]
                row["full_trace_ms"] = statistics.median(t.seconds for t in traces[1:]) * 1e3
                row["full_trace_path"] = traces[-1].path
                del traces
                row["full_trace_peak_bytes"] = peak_bytes(lambda: run_trace(model, "x"))
                fwd, trc, _ = trace_pairs(model, ids, PAIRED_TRACES)
                row["paired_forward_host_ms"] = [round(v, 2) for v in fwd]
                row["paired_full_trace_ms"] = [round(v, 2) for v in trc]
                row["full_trace_over_forward_paired"] = paired_ratio(trc, fwd)["median_ratio"]
            finally:
                model.tokenizer = tok
            if T == reference_at:
                model.use_kernels = False
                row["reference_path_ms"] = gpu_ms(lambda: model(ids), warmup=1, reps=3)
                ref = model(ids).float()
                model.use_kernels = True
                fast = model(ids).float()
                row["fast_vs_reference_logits_rel_err"] = ((fast - ref).norm() / ref.norm()).item()
                row["fast_vs_reference_top1_agree"] = (fast.argmax(-1) == ref.argmax(-1)).float().mean().item()
                del ref, fast
            if T == keep_logits_at:
                resid = [f"blocks.{i}.hook_resid_post" for i in range(cfg.num_hidden_layers)]
                logits, cache = model.run_with_cache(ids, resid)
                kept[T] = (logits.float().cpu(), [cache[n].float().cpu() for n in resid])
                del logits, cache
        b = bound_ms(cfg, T, ceil["matmul_tflops"] * 1e12, ceil["copy_bytes_per_s"])
        bs = bound_ms(cfg, T, SPEC_TFLOPS, ceil["spec_bytes_per_s"])
        row["bound_measured_ceilings_ms"] = b["bound_ms"]
        row["bound_spec_ms"] = bs["bound_ms"]
        row["forward_over_bound_measured"] = row["forward_ms"] / b["bound_ms"]
        row["forward_over_bound_spec"] = row["forward_ms"] / bs["bound_ms"]
        row["lean_trace_over_forward"] = row["lean_trace_ms"] / row["forward_ms"]
        row["full_trace_over_forward"] = row["full_trace_ms"] / row["forward_ms"]
        R_model.setdefault("lengths", []).append(row)
        log.info("%s", json.dumps(row))
    return kept


def layer_microbench(model, cfg, R_model: dict, T: int = 1024) -> None:
    """One MoE layer and one full-attention layer in isolation, fast vs reference, against their own bounds."""
    from gptoss_viz.runtime.kernels.attention import attention_with_sinks_fused
    from gptoss_viz.runtime.gptoss import attend, attention_with_sinks

    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(T, cfg.hidden_size, device=DEV, generator=g).to(torch.bfloat16)
    mlp = model.blocks[1].mlp
    out = {}
    with torch.inference_mode():
        w, idx = mlp.router(x).topk(cfg.num_experts_per_tok, -1)
        w = w.softmax(-1)
        kernel = mlp._kernel(x)  # the one the model runs (moe_hopper's on an H100/H200, blocks re-arranged once)
        fn = getattr(kernel, "func", kernel)  # (moe_hopper's comes with its decode bound: a functools.partial)
        out["moe_kernel"] = f"{fn.__module__}.{fn.__name__}" + "".join(  # (not the descriptors it keeps)
            f", {k}={v}" for k, v in getattr(kernel, "keywords", {}).items() if k != "descriptors")
        ex = mlp.experts
        fast = lambda: kernel(x, idx, w, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,  # noqa
                              ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, ex.limit, ex.alpha)
        out["moe_fast_ms"] = gpu_ms(fast, warmup=3, reps=10)
        out["moe_reference_ms"] = gpu_ms(lambda: mlp.combine(x, idx, w), warmup=1, reps=3)
        A = T * cfg.num_experts_per_tok
        out["moe_flops"] = 2 * A * 3 * cfg.hidden_size * cfg.intermediate_size
        out["moe_weight_bytes"] = sum(t.numel() for t in (ex.gate_up_proj_blocks, ex.gate_up_proj_scales,
                                                          ex.down_proj_blocks, ex.down_proj_scales))
        H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = torch.randn(T, H, D, device=DEV, generator=g).to(torch.bfloat16)
        k = torch.randn(T, K, D, device=DEV, generator=g).to(torch.bfloat16)
        v = torch.randn(T, K, D, device=DEV, generator=g).to(torch.bfloat16)
        sinks = model.blocks[1].attn.sinks
        for win in (None, cfg.sliding_window):
            tag = "full" if win is None else "sliding"
            out[f"attn_{tag}_fast_ms"] = gpu_ms(lambda: attention_with_sinks_fused(q, k, v, sinks, win, want_sink=True),
                                                warmup=3, reps=10)
            out[f"attn_{tag}_reference_ms"] = gpu_ms(lambda: attend(attention_with_sinks(q, k, sinks, win)[0], v),
                                                     warmup=1, reps=5)
    R_model["layer_microbench_T1024"] = out
    log.info("%s", json.dumps(out))


def divergence(model, cfg, R_model: dict, T: int = 256) -> None:
    """How far the bf16 fast path and the bf16 reference path each drift from an fp32 run of the same weights,
    layer by layer: random deep MoE models amplify rounding (a flipped top-k choice changes a token's expert),
    so the whole-model comparison needs this baseline to mean anything."""
    import copy

    exact = copy.deepcopy(model).float()
    exact.use_kernels = False
    g = torch.Generator(device=DEV).manual_seed(3)
    ids = torch.randint(0, 8000, (T,), device=DEV, generator=g)
    names = [f"blocks.{i}.hook_resid_post" for i in range(cfg.num_hidden_layers)]
    idx_names = [f"blocks.{i}.mlp.hook_expert_idx" for i in range(cfg.num_hidden_layers)]
    out = {"T": T}
    with torch.inference_mode():
        lx, cx = exact.run_with_cache(ids, names + idx_names)
        for tag, on in (("fast", True), ("reference", False)):
            model.use_kernels = on
            lg, c = model.run_with_cache(ids, names + idx_names)
            out[f"{tag}_resid_rel_err_by_layer"] = [((c[n].float() - cx[n]).norm() / cx[n].norm()).item()
                                                    for n in names]
            out[f"{tag}_expert_choice_agree_by_layer"] = [(c[n] == cx[n]).float().mean().item() for n in idx_names]
            out[f"{tag}_logits_rel_err"] = ((lg.float() - lx).norm() / lx.norm()).item()
            out[f"{tag}_top1_agree"] = (lg.argmax(-1) == lx.argmax(-1)).float().mean().item()
        model.use_kernels = True
    del exact
    gc.collect()
    torch.cuda.empty_cache()
    R_model["divergence_vs_fp32"] = out
    log.info("%s", json.dumps(out))


def load_measured(ckpt: Path, R_model: dict):
    """load_model(ckpt) onto the GPU, recording its time, the host memory it took (sampled), the GPU peak while
    loading and the checkpoint's largest tensor."""
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with HostMemory() as hm:
        model = load_model(ckpt, device=DEV)
        torch.cuda.synchronize()
    R_model["load_seconds"] = time.perf_counter() - t0
    R_model["load_host_memory"] = {"before": hm.start, "peak": hm.peak}
    R_model["load_gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    R_model["largest_tensor_bytes"] = max(math.prod(s) * (2 if dt.is_floating_point else 1)
                                          for _, s, dt in tensor_plan(model.config))
    return model


def phase_ours20b(R: dict, ckpt: Path, lengths, deadline: float, trace_reps: int = 5) -> dict:
    R["ours20b"] = R20 = {}
    model = load_measured(ckpt, R20)
    cfg = model.config
    from gptoss_viz.runtime.kernels import moe as kmoe  # the tables come from benchmarks/moe_variants.py
    # moe.py's tiles, used where moe_hopper's kernels do not run (layer_microbench's moe_kernel says which ran)
    R20["moe_py_tables"] = {"gate_up": {str(k): v for k, v in kmoe.GATE_UP_CONFIGS.items()},
                            "down": {str(k): v for k, v in kmoe.DOWN_CONFIGS.items()}}
    kept = measure_model(model, cfg, lengths, R20, R["ceilings"], deadline, keep_logits_at=KEEP_AT,
                         trace_reps=trace_reps)
    if time.monotonic() < deadline:
        try:
            divergence(model, cfg, R20)
        except Exception as e:
            log.exception("divergence failed")
            R["errors"]["divergence"] = f"{type(e).__name__}: {e}"[:1000]
    if time.monotonic() < deadline:
        layer_microbench(model, cfg, R20)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return kept


def phase_oss120b(R: dict, deadline: float, trace_reps: int = 5) -> None:
    R["oss120b"] = R120 = {}
    cfg = gptoss_config("120b")
    t0 = time.perf_counter()
    model = random_packed_model(cfg, DEV)
    torch.cuda.synchronize()
    R120["build_seconds"] = time.perf_counter() - t0
    R120["how"] = "random weights built directly in GPU memory (random_packed_model): 65 GB exceeds the disk"
    model.tokenizer = None
    measure_model(model, cfg, [1024, 2048], R120, R["ceilings"], deadline, reference_at=None,
                  trace_reps=trace_reps)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def phase_disk120b(R: dict, ckpt: Path, deadline: float, trace_reps: int = 5) -> None:
    R["disk120b"] = RD = {}
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_random_gptoss.py"), "--size", "120b",
                              "--out", str(ckpt), "--device", "cuda", "--shards", "15"], capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError((out.stdout + out.stderr)[-2000:])
        RD["gen_seconds"] = time.perf_counter() - t0
        RD["files"] = len(list(ckpt.iterdir()))
        RD["bytes_on_disk"] = sum(p.stat().st_size for p in ckpt.iterdir())
        model = load_measured(ckpt, RD)
        log.info("disk120b load: %s", json.dumps({k: v for k, v in RD.items() if k != "files"}))
        model.tokenizer = None
        measure_model(model, model.config, [1024], RD, R["ceilings"], deadline, reference_at=None,
                      trace_reps=trace_reps)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)


def phase_hf20b(R: dict, ckpt: Path, lengths, deadline: float, ours_logits: dict) -> None:
    from transformers import GptOssForCausalLM, Mxfp4Config

    R["hf20b"] = RH = {}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    hf = GptOssForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16, device_map=DEV,
                                           attn_implementation="eager",
                                           quantization_config=Mxfp4Config(dequantize=True)).eval()
    torch.cuda.synchronize()
    RH["load_seconds"] = time.perf_counter() - t0
    RH["weights_bytes_on_gpu"] = torch.cuda.memory_allocated()
    g = torch.Generator(device=DEV).manual_seed(0)
    ids_all = torch.randint(0, 8000, (max(lengths),), device=DEV, generator=g)  # the same ids as ours
    for T in lengths:
        if time.monotonic() > deadline:
            RH.setdefault("skipped", []).append(f"T={T}: out of time")
            continue
        ids = ids_all[:T][None]
        row = {"T": T}
        with torch.inference_mode():
            call = lambda: hf(ids, output_attentions=True, output_router_logits=True)  # noqa: E731
            try:
                with Clocks() as clocks:
                    row["analysis_forward_ms"] = gpu_ms(call, warmup=1, reps=REPS_SHORT if T <= 1024 else 3)
                row["analysis_forward_clocks"] = clocks.summary()
                if T == 1024:
                    row["analysis_forward_from_idle_ms"] = idle_ms(call)
                row["analysis_forward_peak_bytes"] = peak_bytes(call)
            except torch.OutOfMemoryError as e:
                row["analysis_forward_error"] = f"out of GPU memory: {str(e)[:300]}"
                RH.setdefault("lengths", []).append(row)
                gc.collect()
                torch.cuda.empty_cache()
                continue
            if T == 1024:
                row["plain_forward_ms"] = gpu_ms(lambda: hf(ids), warmup=1, reps=3)
            if T in ours_logits:
                res = hf(ids, output_hidden_states=True)
                theirs = res.logits[0].float().cpu()
                ours, ours_resid = ours_logits[T]
                row["ours_vs_hf_logits_rel_err"] = ((ours - theirs).norm() / theirs.norm()).item()
                row["ours_vs_hf_top1_agree"] = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
                # hidden_states[i + 1] is layer i's output (the last one after the final norm: skipped)
                row["ours_vs_hf_resid_rel_err_by_layer"] = [
                    ((o - h[0].float().cpu()).norm() / h[0].float().cpu().norm()).item()
                    for o, h in zip(ours_resid[:-1], res.hidden_states[1:-1])]
                del res
        RH.setdefault("lengths", []).append(row)
        log.info("%s", json.dumps(row))
    pair_lengths = [T for T in lengths if T in PAIR_AT and any(
        r["T"] == T and "analysis_forward_ms" in r for r in RH.get("lengths", []))]
    if pair_lengths and time.monotonic() < deadline:
        paired(RH, hf, ckpt, ids_all, pair_lengths)
    del hf
    gc.collect()
    torch.cuda.empty_cache()


def paired(RH: dict, hf, ckpt: Path, ids_all: torch.Tensor, pair_lengths: list) -> None:
    """Our forward and transformers' analysis forward in one process, in turns (alternate_ms): the same-run ratio
    with the host's and the GPU's drift on both. Back to back, our forwards hold the GPU at its power limit (its
    clock falls) and theirs do not, and the two series run minutes apart; here each call follows one of the other
    kind. Both models on the card at once (~13 + ~39 GiB at 1024 tokens)."""
    ours = load_model(ckpt, device=DEV)
    try:
        for T in pair_lengths:
            ids = ids_all[:T]
            with torch.inference_mode(), Clocks() as clocks:
                t = alternate_ms({"ours": lambda: ours(ids),
                                  "hf": lambda: hf(ids[None], output_attentions=True, output_router_logits=True)},
                                 PAIR_ROUNDS)
            row = {"T": T, "ours_ms": [round(v, 3) for v in t["ours"]], "hf_ms": [round(v, 3) for v in t["hf"]],
                   "ours_median_ms": statistics.median(t["ours"]), "hf_median_ms": statistics.median(t["hf"]),
                   "clocks": clocks.summary(), "ours_path": ours.last_path, **paired_ratio(t["hf"], t["ours"])}
            RH.setdefault("paired", []).append(row)
            log.info("%s", json.dumps(row))
    finally:
        del ours
        gc.collect()
        torch.cuda.empty_cache()


def phase_gpt2(R: dict, T: int = 1024) -> None:
    """GPT-2 124M shape: transformers' GPT2LMHeadModel with random weights, saved in the Hub format and loaded into
    ours; a 1024-token prompt fully captured by both (ours: every hook point, and the app's trace; theirs:
    output_attentions and output_hidden_states), fp32 as GPT-2 ships, TF32 off for both."""
    import shutil
    import tempfile

    from transformers import GPT2Config as HFGPT2Config
    from transformers import GPT2LMHeadModel

    from gptoss_viz.runtime.checkpoints import BUNDLED
    from gptoss_viz.trace import run_trace

    torch.backends.cuda.matmul.allow_tf32 = False
    R["gpt2"] = RG = {"T": T, "dtype": "float32"}
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(HFGPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024,
                                      vocab_size=50257)).eval().to(DEV)
    hf.config._attn_implementation = "eager"
    tmp = Path(tempfile.mkdtemp())
    try:
        hf.save_pretrained(tmp)
        shutil.copyfile(Path(BUNDLED["gpt2-nano"]) / "tokenizer.json", tmp / "tokenizer.json")
        ours = load_model(tmp, device=DEV)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    g = torch.Generator(device=DEV).manual_seed(0)
    ids = torch.randint(0, 8000, (T,), device=DEV, generator=g)
    names = ours.hook_names()
    with torch.inference_mode():
        theirs = lambda: hf(ids[None], output_attentions=True, output_hidden_states=True)  # noqa: E731
        capture = lambda: ours.run_with_cache(ids, names)  # noqa: E731
        RG["hook_points_captured"] = len(names)
        RG["hf_full_capture_ms"] = gpu_ms(theirs, warmup=2, reps=5)
        RG["hf_full_capture_peak_bytes"] = peak_bytes(theirs)
        RG["hf_plain_forward_ms"] = gpu_ms(lambda: hf(ids[None]), warmup=2, reps=5)
        RG["ours_full_capture_ms"] = gpu_ms(capture, warmup=2, reps=5)
        RG["ours_full_capture_peak_bytes"] = peak_bytes(capture)
        RG["ours_plain_forward_ms"] = gpu_ms(lambda: ours(ids), warmup=2, reps=5)
        tok = ours.tokenizer
        ours.tokenizer = IdsOnly(ids.tolist())
        try:
            traces = [run_trace(ours, "x") for _ in range(4)]
            RG["ours_trace_ms"] = statistics.median(t.seconds for t in traces[1:]) * 1e3
        finally:
            ours.tokenizer = tok
        a, b = ours(ids).float(), hf(ids[None]).logits[0].float()
        RG["ours_vs_hf_logits_max_abs_diff"] = (a - b).abs().max().item()
    RG["speedup_full_capture"] = RG["hf_full_capture_ms"] / RG["ours_full_capture_ms"]
    log.info("%s", json.dumps(RG))
    del hf, ours
    gc.collect()
    torch.cuda.empty_cache()


def _clock_note(row: dict, key: str) -> str:
    """' | 1680 MHz, 690 W; from idle 16.9 ms; host launch 12.3 ms' for a row's timed forward, where measured."""
    c = row.get(key + "_clocks", {})
    note = f" | {c['sm_mhz_median']:.0f} MHz, {c['watts_median']:.0f} W" if "sm_mhz_median" in c else ""
    if key + "_from_idle_ms" in row:
        note += f"; from idle {row[key + '_from_idle_ms']:.1f} ms"
    if key + "_host_launch_ms" in row:
        note += f"; host launch {row[key + '_host_launch_ms']:.1f} ms"
    return note


def _paired_line(r: dict) -> str:
    """The summary line of one length of `paired`."""
    c = r.get("clocks", {})
    clock = f" | {c['sm_mhz_median']:.0f} MHz, {c['watts_median']:.0f} W" if "sm_mhz_median" in c else ""
    return (f"in turns T={r['T']}: ours {r['ours_median_ms']:.1f} ms, transformers {r['hf_median_ms']:.1f} ms: "
            f"{r['median_ratio']:.2f}x (median of {len(r['ours_ms'])} rounds' ratios; "
            f"{r['ratio_of_medians']:.2f}x of the medians){clock}")


def summary(R: dict) -> str:
    lines = [f"{R['env']['gpu']} {R['env']['date']}"]
    c = R.get("ceilings", {})
    if c:
        lines.append(f"ceilings: {c['matmul_tflops']:.0f} TFLOP/s bf16, copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    d = R.get("disk120b", {})
    if "load_seconds" in d:
        lines.append(f"disk120b: {d['bytes_on_disk'] / 1e9:.1f} GB in {d['files']} files, written in "
                     f"{d['gen_seconds']:.0f} s, loaded in {d['load_seconds']:.1f} s; host peak RSS "
                     f"{d['load_host_memory']['peak']['VmRSS'] / GiB:.2f} GiB (anonymous "
                     f"{d['load_host_memory']['peak']['RssAnon'] / GiB:.2f}), largest tensor "
                     f"{d['largest_tensor_bytes'] / GiB:.2f} GiB; GPU peak while loading "
                     f"{d['load_gpu_peak_bytes'] / GiB:.2f} GiB")
    for key in ("ours20b", "oss120b", "disk120b"):
        for r in R.get(key, {}).get("lengths", []):
            if "full_trace_ms" not in r:
                lines.append(f"{key} T={r['T']}: incomplete {r}")
                continue
            lines.append(f"{key} T={r['T']}: fwd {r['forward_ms']:.1f} ms ({r['forward_over_bound_spec']:.2f}x spec "
                         f"bound, {r['forward_over_bound_measured']:.2f}x measured) peak "
                         f"{r['forward_peak_bytes'] / GiB:.2f} GiB | lean {r['lean_trace_ms']:.1f} ms "
                         f"{r['lean_trace_peak_bytes'] / GiB:.2f} GiB | full {r['full_trace_ms']:.1f} ms "
                         f"{r['full_trace_peak_bytes'] / GiB:.2f} GiB"
                         + (f" (x{r['full_trace_over_forward_paired']:.2f} in turns with the forward)"
                            if "full_trace_over_forward_paired" in r else "")
                         + (f" | reference {r['reference_path_ms']:.1f} ms" if "reference_path_ms" in r else "")
                         + _clock_note(r, "forward"))
    dv = R.get("ours20b", {}).get("divergence_vs_fp32")
    if dv:
        for tag in ("fast", "reference"):
            errs = dv[tag + "_resid_rel_err_by_layer"]
            lines.append(f"vs fp32 T={dv['T']} {tag}: logits rel err {dv[tag + '_logits_rel_err']:.3g}, top-1 "
                         f"{dv[tag + '_top1_agree']:.3f}, resid err layer 0/5/last "
                         f"{errs[0]:.2g}/{errs[min(5, len(errs) - 1)]:.2g}/{errs[-1]:.2g}")
    for r in R.get("hf20b", {}).get("lengths", []):
        if "analysis_forward_ms" not in r:
            lines.append(f"hf20b T={r['T']}: {r.get('analysis_forward_error')}")
            continue
        lines.append(f"hf20b T={r['T']}: {r['analysis_forward_ms']:.1f} ms peak "
                     f"{r['analysis_forward_peak_bytes'] / GiB:.2f} GiB" + _clock_note(r, "analysis_forward")
                     + (f" | ours vs hf resid err layer 0/last {r['ours_vs_hf_resid_rel_err_by_layer'][0]:.2g}/"
                        f"{r['ours_vs_hf_resid_rel_err_by_layer'][-1]:.2g}" if "ours_vs_hf_resid_rel_err_by_layer" in r
                        else ""))
    for r in R.get("hf20b", {}).get("paired", []):
        lines.append(_paired_line(r))
    g2 = R.get("gpt2")
    if g2 and "speedup_full_capture" in g2:
        lines.append(f"gpt2 124M T={g2['T']}: full capture ours {g2['ours_full_capture_ms']:.1f} ms "
                     f"({g2['ours_full_capture_peak_bytes'] / GiB:.2f} GiB) vs transformers {g2['hf_full_capture_ms']:.1f}"
                     f" ms ({g2['hf_full_capture_peak_bytes'] / GiB:.2f} GiB): {g2['speedup_full_capture']:.2f}x; trace "
                     f"{g2['ours_trace_ms']:.1f} ms; logits max diff {g2['ours_vs_hf_logits_max_abs_diff']:.2g}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_gptoss.json"))
    ap.add_argument("--ckpt", default="/tmp/gptoss-20b-random")
    ap.add_argument("--ckpt120", default="/tmp/gptoss-120b-random", help="where disk120b writes 120b (then deletes it)")
    ap.add_argument("--lengths", default="128,512,1024,2048,4096")
    ap.add_argument("--phases", default="ceilings,gen20b,ours20b,oss120b,hf20b,gpt2")
    ap.add_argument("--budget-s", type=float, default=480, help="start no phase step after this many seconds")
    ap.add_argument("--trace-reps", type=int, default=5, help="timed full traces per length (median)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    deadline = time.monotonic() + args.budget_s
    lengths = [int(t) for t in args.lengths.split(",")]
    ckpt = Path(args.ckpt)
    R: dict = {"errors": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def run(name, fn, *a):
        if name not in args.phases.split(","):
            return None
        if time.monotonic() > deadline:
            R["errors"][name] = "skipped: out of time"
            return None
        t0 = time.perf_counter()
        try:
            return fn(*a)
        except Exception as e:  # record and go on: later phases are independent
            log.exception("phase %s failed", name)
            R["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        finally:
            R.setdefault("phase_seconds", {})[name] = time.perf_counter() - t0
            out.write_text(json.dumps(R, indent=2) + "\n")

    phase_env(R)
    run("ceilings", phase_ceilings, R)
    if "gen20b" in args.phases and not (ckpt / "model.safetensors.index.json").is_file():
        run("gen20b", phase_gen20b, R, ckpt)
    kept = run("ours20b", phase_ours20b, R, ckpt, lengths, deadline, args.trace_reps) or {}
    run("oss120b", phase_oss120b, R, deadline, args.trace_reps)
    run("disk120b", phase_disk120b, R, Path(args.ckpt120), deadline, args.trace_reps)
    run("hf20b", phase_hf20b, R, ckpt, lengths, deadline, kept)
    run("gpt2", phase_gpt2, R)
    out.write_text(json.dumps(R, indent=2) + "\n")
    print(summary(R))
    print("errors:", json.dumps(R["errors"]))


if __name__ == "__main__":
    main()
