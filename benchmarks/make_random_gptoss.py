"""Write a full-size gpt-oss checkpoint with random weights in the Hub's exact format (names, shapes, dtypes,
MXFP4 experts, sharding + index; see gptoss_viz/runtime/random_checkpoint.py), for GPU benchmarks where the Hub
is out of reach.

    python benchmarks/make_random_gptoss.py --size 20b --out /tmp/gptoss-20b --device cuda

20b is 13.8 GB on disk (3 shards). 120b is 65.2 GB: the benchmark builds it in GPU memory directly
(random_packed_model) instead, since the GPU machine's 64 GB disk cannot hold it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptoss_viz.runtime.random_checkpoint import (disk_free_bytes, gptoss_config, plan_bytes,  # noqa: E402
                                                  tensor_plan, write_random_checkpoint)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["20b", "120b"], default="20b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", help="where to draw the random numbers (cuda is much faster)")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = gptoss_config(args.size)
    need = plan_bytes(tensor_plan(cfg))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    free = disk_free_bytes(out)
    if free < need * 1.02:
        sys.exit(f"{out}: {free / 1e9:.1f} GB free, the {args.size} checkpoint needs {need / 1e9:.1f} GB")
    t0 = time.perf_counter()
    write_random_checkpoint(out, cfg, n_shards=args.shards, device=args.device, seed=args.seed)
    print(json.dumps({"size": args.size, "dir": str(out), "bytes": need, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
