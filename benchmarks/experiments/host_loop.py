"""A loop of 20b forwards for a sampling profiler to watch (py-spy): `python host_loop.py [T] [N]`, each forward
followed by a wait for the GPU, so that what the host does is what it costs. `python host_loop.py --summarize RAW
OUT.txt [LINE]` turns py-spy's raw output (`py-spy record --format raw`) into each function's share of the timed forwards'
samples (the warm-up and the waits left out), inclusive and own. Development probe (issue 6)."""

import collections
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model  # noqa: E402


def summarize(raw: Path, out: Path, line: int | None = None, top: int = 45) -> None:
    """Shares of the samples taken inside the timed loop's `model(ids)`: its line in main (this file's, or `line`
    for a profile of an earlier version of it)."""
    if line is None:
        line = next(i for i, t in enumerate(Path(__file__).read_text().splitlines(), 1)
                    if t.lstrip().startswith("host.append(")) - 1  # the timed model(ids) is the line before
    here = f"main (host_loop.py:{line})"
    incl, own, total = collections.Counter(), collections.Counter(), 0
    for row in raw.read_text().splitlines():
        stack, _, n = row.rpartition(" ")
        if here not in stack:
            continue
        frames = [re.sub(r"\(.*/", "(", re.sub(r":\d+\)", ")", f)) for f in stack.split(";")]
        total += int(n)
        for f in set(frames):
            incl[f] += int(n)
        own[frames[-1]] += int(n)
    lines = [f"# py-spy samples inside the timed forwards: {total}", "# inclusive"]
    lines += [f"{n / total * 100:5.1f}%  {f}" for f, n in incl.most_common(top)]
    lines += ["# own (a C call counts for the Python line that made it)"]
    lines += [f"{n / total * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["--summarize"]:
        summarize(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
        return
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    model = random_packed_model(gptoss_config("20b"), "cuda")
    model.prepare_kernels()
    ids = torch.randint(0, 8000, (T,), device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        host = []
        for _ in range(n):
            a = time.perf_counter()
            model(ids)
            host.append(time.perf_counter() - a)
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    host.sort()
    print(f"T={T}: {n} forwards, {wall / n * 1e3:.2f} ms each with the wait; host launch median "
          f"{host[n // 2] * 1e3:.2f} ms, min {host[0] * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    main()
