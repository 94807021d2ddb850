"""The SASS of the kernels that end in an RMSNorm, compiled on the CPU (no GPU needed): one line per compiled
kernel with a hash of its instructions (addresses and encodings left out). Run before and after a change that
should not change what they compute, and compare (twenty-eighth session: the norm's lines moved into
fused._rms_norm_row gave byte-identical SASS for all seven variants on sm_80, sm_89 and sm_90).

    ARCH=90 TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/experiments/norm_sass_probe.py
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_compat import COMPILED, _compile_only, _Target  # noqa: E402
from triton.runtime import driver  # noqa: E402


def main() -> None:
    driver.set_active(_Target(int(os.environ.get("ARCH", "90"))))
    _compile_only()
    from gptoss_viz.runtime.kernels import fused, moe

    bf = torch.bfloat16
    T, d = 64, 2880
    x = torch.randn(T, d).to(bf)
    with torch.inference_mode():
        fused.rms_norm_fused(x, torch.ones(d), 1e-5)
        fused.rms_norm_fused(x, torch.ones(d), 1e-5, x)
        fused.embed_fused(torch.randint(0, 2048, (T,)), torch.randn(2048, d).to(bf), (torch.ones(d), 1e-5))
        fused.embed_fused(torch.randint(0, 2048, (T,)), torch.randn(2048, d).to(bf), None)
        moe.sum_slots(torch.zeros(T * 4, d).to(bf), T, bf, x, (torch.ones(d), 1e-5))
        moe.sum_slots(torch.zeros(T * 4, d).to(bf), T, bf, x)
        moe.sum_slots(torch.zeros(T * 4, d).to(bf), T, bf)
    cuobjdump = Path(__import__("triton").__file__).parent / "backends/nvidia/bin/cuobjdump"
    rows = []
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / "norm_sass_probe.cubin"
    for k in {id(k): k for k in COMPILED}.values():  # (each compiled variant once)
        cubin.write_bytes(k.asm["cubin"])
        sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
        ins = [re.sub(r"/\*[^*]*\*/", "", line).strip() for line in sass.splitlines()
               if re.search(r"/\*[0-9a-f]{4,5}\*/", line)]
        rows.append((k.name, hashlib.sha256("\n".join(ins).encode()).hexdigest()[:16], len(ins)))
    for r in sorted(rows):
        print(*r)


if __name__ == "__main__":
    main()
