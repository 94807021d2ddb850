"""The 20b forward's GPU work under one Triton toolchain (the Triton importable in this process, and the ptxas it
uses: its own, or TRITON_PTXAS_PATH's), so that toolchains can be compared process by process on one machine.

One process measures one toolchain. `toolchain_probe.py OUT.json [LENGTHS]` builds the random 20b model in GPU
memory (seed 0, as the other probes), and per length records, after a 50 ms pause each and alternating:
- the forward replayed from a CUDA graph (the GPU's work, no host time);
- the eager forward (`model(ids)`, CUDA events; the host's time included), with its input checks skipped as for
  the capture, and first as users call it, checks included (`checked_ms` after a pause, `checked_b2b_ms` straight
  after the previous forward);
- the MoE kernels' summed GPU time in a forward (torch.profiler);
- a checksum of the logits (their fp64 sum and abs-sum), so that toolchains can be checked to give the same
  logits (different ptxas versions may order the fp32 sums of a kernel differently; the checksums show it).
`--driver` runs it instead as the comparison: each toolchain given (NAME=ENV, e.g. `t36=` `ptxas13=
TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas` `t371=PYTHONPATH=/tmp/t371`) in its own process with its own
Triton cache, `--rounds` times in turn, and writes every process's rows to OUT.json. Development probe (issue 6).

    python benchmarks/experiments/toolchain_probe.py OUT.json 1024
    python benchmarks/experiments/toolchain_probe.py --driver OUT.json [--rounds 2] [--lengths 128,1024] t36= ...
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def driver(argv: list[str]) -> None:
    out = Path(argv[0])
    rounds, lengths = 2, ["1024"]
    if "--rounds" in argv:
        i = argv.index("--rounds")
        rounds = int(argv[i + 1])
        del argv[i:i + 2]
    if "--lengths" in argv:
        i = argv.index("--lengths")
        lengths = argv[i + 1].split(",")
        del argv[i:i + 2]
    chains = [a.split("=", 1) for a in argv[1:]]
    rows = []
    for r in range(rounds):
        for name, env_text in chains:
            env = dict(os.environ)
            if env_text:
                key, value = env_text.split("=", 1)
                env[key] = value + (os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else "")
            env["TRITON_CACHE_DIR"] = f"/tmp/triton_cache_{name}"
            part = out.with_suffix(f".{name}.{r}.json")
            t0 = time.time()
            done = subprocess.run([sys.executable, __file__, str(part), *lengths], env=env, capture_output=True,
                                  text=True)
            print(f"[{name} round {r}] rc {done.returncode} in {time.time() - t0:.0f} s", flush=True)
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], flush=True)
                rows.append({"toolchain": name, "round": r, "error": done.stderr[-2000:]})
                continue
            row = json.loads(part.read_text())
            row.update(toolchain=name, round=r)
            rows.append(row)
            print(json.dumps(row)[:600], flush=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))


def probe(argv: list[str]) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from probe_setup import capturable, capture, moe_ms, probe_setup, replay_ms

    import triton
    from gpu_gptoss import event_ms

    sys.argv = [sys.argv[0]] + argv
    out, cfg, model, R, prompts = probe_setup([1024])
    R["triton"] = triton.__version__
    R["ptxas"] = os.environ.get("TRITON_PTXAS_PATH", "triton's own")
    from gptoss_viz.runtime.kernels import launch, moe_hopper

    R["hopper_moe_trusted"] = moe_hopper.trusted(torch.device("cuda"))  # (its self-test on an unverified Triton)
    R["direct_launches"] = launch.DIRECT  # (else every launch through the JIT: more host time)
    for T, ids in prompts:
        with torch.inference_mode():
            logits = model(ids)
            R["paths"] = model.last_path
            lf = logits.double()
            row = {"T": T, "logits_sum": lf.sum().item(), "logits_abs_sum": lf.abs().sum().item()}
            del logits, lf
            row["moe_ms"] = moe_ms(model, ids)
            eager = lambda: model(ids)  # noqa: E731
            # the forward as users call it, its input checks included (capturable() below skips them): after a
            # 50 ms pause, and straight after the previous one's synchronise
            c_ms, b_ms = [], []
            for _ in range(9):
                torch.cuda.synchronize()
                time.sleep(0.05)
                c_ms.append(event_ms(eager))
            for _ in range(9):
                torch.cuda.synchronize()
                b_ms.append(event_ms(eager))
            row.update(checked_ms=statistics.median(c_ms), checked_b2b_ms=statistics.median(b_ms), checked_all=c_ms,
                       checked_b2b_all=b_ms)
            capturable(model)
            graph, _ = capture(eager)
            g_ms, e_ms = [], []
            for _ in range(9):
                torch.cuda.synchronize()
                time.sleep(0.05)
                g_ms.append(replay_ms(graph, n=1))
                torch.cuda.synchronize()
                time.sleep(0.05)
                e_ms.append(event_ms(eager))
            del graph
        row.update(graph_ms=statistics.median(g_ms), eager_ms=statistics.median(e_ms), graph_all=g_ms,
                   eager_all=e_ms)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--driver":
        driver(sys.argv[2:])
    else:
        probe(sys.argv[1:])
