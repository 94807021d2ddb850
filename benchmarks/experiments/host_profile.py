"""Where the host's time goes when it launches a forward: cProfile over forwards of a few 20b-shaped layers on the
GPU (the per-layer host cost does not depend on the number of layers), plus the plain host time per layer without
the profiler. Development probe (issue 6): `python host_profile.py OUT.txt [T] [layers] [--trace]`; with --trace,
run_trace (whose time includes waiting for the GPU and the copies to the host)."""

import cProfile
import dataclasses
import io
import pstats
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def main() -> None:
    trace = "--trace" in sys.argv  # profile run_trace (the app's full trace) instead of the plain forward
    if trace:
        sys.argv.remove("--trace")
    out = Path(sys.argv[1])
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    cfg = gptoss_config("20b", num_hidden_layers=layers, vocab_size=8192)
    cfg = dataclasses.replace(cfg, layer_types=cfg.layer_types[:layers])
    model = random_packed_model(cfg, "cuda")
    model.prepare_kernels()
    ids = torch.randint(0, 8192, (T,), device="cuda")
    lines = [f"# {torch.cuda.get_device_name()}, {layers} layers of 20b shape, {T} tokens"
             + (", run_trace (the full trace, its copies to the host included)" if trace else "")]
    run = lambda: model(ids)  # noqa: E731
    if trace:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_gptoss import IdsOnly

        from gptoss_viz.trace import run_trace

        model.tokenizer = IdsOnly(ids.tolist())
        run = lambda: run_trace(model, "x")  # noqa: E731
    with torch.inference_mode():
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        host = []
        for _ in range(20):  # host time of one forward (the GPU queue is not full: short prompts, few layers)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            host.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        host.sort()
        lines.append(f"host ms a forward: median {host[10]:.3f}, min {host[0]:.3f}; a layer ~{host[10] / layers:.3f} "
                     f"(with the embedding, norm and LM head spread over the layers)")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            run()
        prof.disable()
        torch.cuda.synchronize()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(45)
    text = s.getvalue().replace(str(ROOT) + "/", "")  # no machine's paths in the record
    text = re.sub(r"\S*/site-packages/", "site-packages/", text)
    lines.append(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(lines[0], lines[1], sep="\n")


if __name__ == "__main__":
    main()
