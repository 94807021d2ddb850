"""Programmatic dependent launch (PDL) for the fast path's Triton and Gluon kernels, off and on in turn in one
process: the 20b forward's GPU work (a CUDA graph captured with each setting and replayed) and its eager time,
and the logits against the setting off. Development probe (issue 6, fourteenth session), on a checkout with
`experiments/pdl.patch` applied (which adds `Launcher.pdl`): `pdl_probe.py OUT.json [LENGTHS]`.

With PDL, a kernel that has a PDL parameter is launched with CUDA's programmatic stream serialisation and waits
(griddepcontrol.wait) before touching memory; it lets the next kernel launch once all its programs have started.
"""

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))

from gpu_gptoss import gpu_ms  # noqa: E402
from probe_setup import capturable, capture, probe_setup  # noqa: E402

from gptoss_viz.runtime.kernels.launch import Launcher  # noqa: E402


def main() -> None:
    out, _, model, R, prompts = probe_setup([1024, 2048])
    capturable(model)
    for T, ids in prompts:
        res = {False: {"replay": [], "eager": []}, True: {"replay": [], "eager": []}}
        with torch.inference_mode():
            Launcher.pdl = False
            ref = model(ids)
            same = {}
            for _ in range(2):
                for pdl in (False, True):
                    Launcher.pdl = pdl
                    model(ids)
                    graph, logits = capture(lambda: model(ids))
                    graph.replay()
                    torch.cuda.synchronize()
                    same[pdl] = torch.equal(logits, ref) and torch.equal(model(ids), ref)
                    res[pdl]["replay"].append(gpu_ms(graph.replay, warmup=2, reps=9))
                    res[pdl]["eager"].append(gpu_ms(lambda: model(ids), warmup=1, reps=9))
                    del graph, logits
                    torch.cuda.empty_cache()
        Launcher.pdl = False
        row = {"T": T, **{("pdl" if k else "no_pdl"): v for k, v in res.items()},
               "replay_median": {str(k): statistics.median(v["replay"]) for k, v in res.items()},
               "eager_median": {str(k): statistics.median(v["eager"]) for k, v in res.items()},
               "logits_equal_to_no_pdl": {str(k): v for k, v in same.items()}}
        print(json.dumps(row), flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
