"""gpt-oss-20b under a 16 GB card's memory, emulated on a larger GPU (issue 6).

    python benchmarks/gpu_memory_cap.py --cap-gib 15.0 --out benchmarks/results/gpu_memory_cap_h200.json

No 16 GB card is lent here, so this caps PyTorch's CUDA allocator with torch.cuda.set_per_process_memory_fraction
before anything is loaded: every allocation past the cap raises OutOfMemoryError, as it would on the small card
(the CUDA context, ~0.5 GiB, is outside the cap, as it is outside the ~15.5 GiB a 16 GiB card leaves to PyTorch).
Then, from a random checkpoint in the Hub's exact format on disk (make_random_gptoss.py): load_model, and per
prompt length the un-instrumented forward and the app's full trace (gptoss_viz.trace.run_trace), each recorded as
ok (with time and allocator peaks) or as the error it raised. A control allocation of 1.05x the cap checks that
the cap is enforced. The allocator's settings are the app's (expandable segments, unless PYTORCH_CUDA_ALLOC_CONF
says otherwise; recorded as alloc_conf).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gptoss_viz import load_model, prefer_expandable_segments  # noqa: E402

prefer_expandable_segments()  # as the app runs (before torch touches CUDA)
import torch  # noqa: E402

from gpu_gptoss import IdsOnly, phase_gen20b  # noqa: E402

GIB = 2 ** 30


def attempt(fn):
    """(fn's result or None, a record: ok with time and allocator peaks, or the out-of-memory error)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        value = fn()
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as e:
        return None, {"ok": False, "error": f"OutOfMemoryError: {str(e).splitlines()[0][:300]}"}
    return value, {"ok": True, "seconds": time.perf_counter() - t0,
                   "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                   "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="/tmp/gptoss-20b-random")
    ap.add_argument("--cap-gib", type=float, default=15.0)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ckpt = Path(args.ckpt)
    total = torch.cuda.get_device_properties(0).total_memory
    R = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
         "cap_gib": args.cap_gib, "device_total_gib": total / GIB,
         "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}  # the allocator's settings (the app's default)
    if not (ckpt / "config.json").exists():
        phase_gen20b(R, ckpt)  # in its own process, before the cap
    torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total)
    model, R["load"] = attempt(lambda: load_model(ckpt, device="cuda"))
    if model is not None:
        R["weights_gib"] = torch.cuda.memory_allocated() / GIB
        from gptoss_viz.trace import run_trace

        g = torch.Generator(device="cuda").manual_seed(0)
        ids_all = torch.randint(0, 8000, (max(args.lengths),), device="cuda", generator=g)
        tok = model.tokenizer
        R["lengths"] = []
        for T in args.lengths:
            ids = ids_all[:T]
            row = {"T": T}
            with torch.inference_mode():
                logits, row["forward"] = attempt(lambda: model(ids))
                del logits  # (held, it would sit in the full trace's memory: 0.77 GiB at 2048 tokens)
                if row["forward"]["ok"]:
                    row["forward"]["path"] = model.last_path
                model.tokenizer = IdsOnly(ids.tolist())
                try:
                    trace, row["full_trace"] = attempt(lambda: run_trace(model, "x"))
                    if trace is not None:
                        row["full_trace"]["path"] = trace.path
                    del trace
                finally:
                    model.tokenizer = tok
            torch.cuda.empty_cache()
            R["lengths"].append(row)
            print(T, json.dumps(row))
    _, R["control_1.05x_cap"] = attempt(lambda: torch.empty(int(1.05 * args.cap_gib * GIB), dtype=torch.uint8,
                                                         device="cuda"))
    print("control", R["control_1.05x_cap"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
