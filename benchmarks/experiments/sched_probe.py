"""Does the way the host thread waits for the GPU change how fast it launches the next 20b forward? The primary
CUDA context's scheduling flag (the driver's cuDevicePrimaryCtxSetFlags, before torch creates the context: auto,
spin, yield or blocking sync) set in this process, then the forward timed as gpu_gptoss.py times it (CUDA events,
calls back to back, each after the previous one's synchronise), from idle (after 0.5 s), and the host's launch
time of each. host_steps_probe.py found the host ~1.5x slower in the forward's first layer than in later ones, and
host_profile.py ~1.7x slower on every call at 1024 tokens (where the host had waited for the GPU) than at 128.
Development probe (issue 6).

    python benchmarks/experiments/sched_probe.py OUT.json {auto,spin,yield,blocking} [LENGTHS]
"""

import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

FLAGS = {"auto": 0, "spin": 1, "yield": 2, "blocking": 4}


def set_sched(name: str) -> dict:
    cu = ctypes.CDLL("libcuda.so.1")
    assert cu.cuInit(0) == 0
    dev = ctypes.c_int()
    assert cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    rc = cu.cuDevicePrimaryCtxSetFlags(dev, FLAGS[name])
    flags, active = ctypes.c_uint(), ctypes.c_int()
    cu.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active))
    return {"set_rc": rc, "flags_before_torch": flags.value, "active_before_torch": active.value, "_cu": cu,
            "_dev": dev}


def main() -> None:
    out = Path(sys.argv[1])
    sched = sys.argv.pop(2)
    st = set_sched(sched)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"))
    from eager_gap_probe import timed
    from probe_setup import probe_setup

    _, cfg, model, R, prompts = probe_setup([128, 1024])
    flags, active = ctypes.c_uint(), ctypes.c_int()
    st["_cu"].cuDevicePrimaryCtxGetState(st["_dev"], ctypes.byref(flags), ctypes.byref(active))
    R["sched"] = sched
    R["flags"] = {k: v for k, v in st.items() if not k.startswith("_")}
    R["flags"]["flags_after_load"] = flags.value
    model.use_kernels = True
    for T, ids in prompts:
        row = {"T": T}
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            torch.cuda.synchronize()
            ev, host = zip(*[timed(lambda: model(ids)) for _ in range(11)])  # back to back
            idle_ev, idle_host = [], []
            for _ in range(5):
                torch.cuda.synchronize()
                time.sleep(0.5)
                e, h = timed(lambda: model(ids))
                idle_ev.append(e)
                idle_host.append(h)
        row.update({"forward_ms": round(statistics.median(ev), 3), "host_ms": round(statistics.median(host), 3),
                    "from_idle_ms": round(statistics.median(idle_ev), 3),
                    "from_idle_host_ms": round(statistics.median(idle_host), 3),
                    "forward_runs_ms": [round(v, 3) for v in ev]})
        print(sched, R["flags"], T, {k: v for k, v in row.items() if k != "forward_runs_ms"}, flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
