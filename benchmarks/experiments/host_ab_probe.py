"""Host time to launch a 20b forward at 1024 tokens, two ways alternating in one process (so that the host's state,
which drifts, is the same for both): the RoPE tables kept (GptOss.rope now) or dropped before every forward (as
every forward computed them before), each forward followed by a wait for the GPU. Also the host time of three ways
to allocate a kernel's output on the GPU. Development probe (issue 6): `python host_ab_probe.py OUT.json [T]`."""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from host_ops import host_us  # noqa: E402

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    model = random_packed_model(gptoss_config("20b"), "cuda")
    model.prepare_kernels()
    ids = torch.randint(0, 8000, (T,), device="cuda")
    R = {"gpu": torch.cuda.get_device_name(), "T": T, "host_ms": {"rope tables kept": [], "rope tables dropped": []}}
    with torch.inference_mode():
        ref = model(ids)
        for _ in range(3):
            model(ids)
        for _ in range(40):
            for name in R["host_ms"]:
                if name == "rope tables dropped":
                    model._rope_tables.clear()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits = model(ids)
                R["host_ms"][name].append((time.perf_counter() - t0) * 1e3)
                torch.cuda.synchronize()
                assert torch.equal(logits, ref), "the logits changed"
    R["median_ms"] = {k: statistics.median(v) for k, v in R["host_ms"].items()}
    x = torch.empty(T, 2880, device="cuda", dtype=torch.bfloat16)
    R["alloc_us"] = {
        "torch.empty(shape, device=x.device, dtype=x.dtype)": host_us(
            lambda: torch.empty(x.shape, device=x.device, dtype=x.dtype), 2000),
        "torch.empty_like(x)": host_us(lambda: torch.empty_like(x), 2000),
        "x.new_empty(shape)": host_us(lambda: x.new_empty(x.shape), 2000),
        "torch.empty(T * 4, 2880, device=x.device, dtype=torch.float32)": host_us(
            lambda: torch.empty(T * 4, 2880, device=x.device, dtype=torch.float32), 2000),
        "x.new_empty((T * 4, 2880), dtype=torch.float32)": host_us(
            lambda: x.new_empty((T * 4, 2880), dtype=torch.float32), 2000),
    }
    print(json.dumps({k: R[k] for k in ("median_ms", "alloc_us")}, indent=1), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
