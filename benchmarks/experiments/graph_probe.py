"""How much of the 20b forward is the host's: the same forward launched eagerly and replayed from a CUDA graph
(captured once per length), same run; the replay's logits against the eager ones. Development probe (issue 6)."""

import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from gpu_gptoss import gpu_ms  # noqa: E402
from probe_setup import capturable, capture  # noqa: E402

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    lengths = [int(t) for t in sys.argv[2:]] or [128, 1024, 2048]
    cfg = gptoss_config("20b")
    model = random_packed_model(cfg, "cuda")
    model.prepare_kernels()
    model.use_kernels = True
    capturable(model)  # (the ids check skipped: it may not run while capturing)
    R = {"gpu": torch.cuda.get_device_name(), "lengths": []}
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in lengths:
        ids = torch.randint(0, 8000, (T,), device="cuda", generator=g)
        with torch.inference_mode():
            eager = gpu_ms(lambda: model(ids), warmup=2, reps=9)
            ref = model(ids)
            host = []
            for _ in range(5):  # the host's time to launch one forward (the GPU queue is deep enough not to block)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids)
                host.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            print(T, "eager", round(eager, 2), "host launch ms", [round(h, 2) for h in host], flush=True)
            try:
                graph, logits = capture(lambda: model(ids))
            except Exception:
                traceback.print_exc()
                return
            graph.replay()
            torch.cuda.synchronize()
            same = torch.equal(logits, ref)
            diff = (logits.float() - ref.float()).abs().max().item()
            replay = gpu_ms(graph.replay, warmup=2, reps=9)
            eager2 = gpu_ms(lambda: model(ids), warmup=1, reps=9)
            del graph, logits
        row = {"T": T, "eager_ms": eager, "eager_again_ms": eager2, "graph_replay_ms": replay,
               "bit_identical": same, "max_abs_diff": diff, "path": model.last_path}
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
        torch.cuda.empty_cache()
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
