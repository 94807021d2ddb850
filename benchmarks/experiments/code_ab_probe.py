"""Two versions of the package against each other on the 20b forward: host time to launch it and its time end to
end, at a few lengths, each version in its own processes, the processes alternating (A B A B ...), so that drift
in the host's speed falls on both. Each forward's logits are reduced to a checksum: the versions should agree bit
for bit where neither changed the maths. Development probe (issue 6):

    python code_ab_probe.py OUT.json A_ROOT B_ROOT [LENGTHS...] [--rounds N]

A_ROOT / B_ROOT hold a `gptoss_viz` package each (e.g. `git archive HEAD gptoss_viz | tar -x -C old/`)."""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(root: str, lengths: list[int], n: int) -> dict:
    sys.path.insert(0, root)
    import torch

    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    model = random_packed_model(gptoss_config("20b"), "cuda")
    model.prepare_kernels()
    g = torch.Generator("cuda").manual_seed(0)
    R = {}
    with torch.inference_mode():
        for T in lengths:
            ids = torch.randint(0, 8000, (T,), device="cuda", generator=g)
            for _ in range(3):
                model(ids)
            torch.cuda.synchronize()
            host, total = [], []
            for _ in range(n):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits = model(ids)
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                host.append((t1 - t0) * 1e3)
                total.append((t2 - t0) * 1e3)
            f = logits.float()
            R[T] = {"host_ms": statistics.median(host), "total_ms": statistics.median(total),
                    "total_min_ms": min(total), "checksum": [f.sum().item(), f.abs().sum().item(), f[-1, :4].tolist()],
                    "path": model.last_path}
    return R


def main() -> None:
    if sys.argv[1] == "--child":
        root, n = sys.argv[2], int(sys.argv[3])
        print("RESULT " + json.dumps(child(root, [int(t) for t in sys.argv[4:]], n)), flush=True)
        return
    rounds = 2
    if "--rounds" in sys.argv:
        i = sys.argv.index("--rounds")
        rounds = int(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    out, a, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    lengths = [int(t) for t in sys.argv[4:]] or [128, 1024]
    runs = {"A": [], "B": []}
    for r in range(rounds):
        for name, root in (("A", a), ("B", b)):
            p = subprocess.run([sys.executable, __file__, "--child", os.path.abspath(root), "30", *map(str, lengths)],
                               capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                raise SystemExit(f"{name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            got = json.loads(line[0][7:])
            runs[name].append(got)
            print(name, r, {T: (round(v["host_ms"], 2), round(v["total_ms"], 2)) for T, v in got.items()}, flush=True)
    import torch

    R = {"gpu": torch.cuda.get_device_name(), "A": os.path.basename(os.path.normpath(a)),
         "B": os.path.basename(os.path.normpath(b)), "runs": runs, "summary": {}}
    for T in map(str, lengths):
        row = {}
        for name in ("A", "B"):
            row[name] = {k: [round(run[T][k], 3) for run in runs[name]] for k in ("host_ms", "total_ms")}
        row["same_logits"] = all(run[T]["checksum"] == runs["A"][0][T]["checksum"] for run in runs["A"] + runs["B"])
        R["summary"][T] = row
    print(json.dumps(R["summary"], indent=1), flush=True)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
