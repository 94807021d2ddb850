"""trace.top_predictions on gpt-oss-sized logits: torch's topk + chunked fp32 logsumexp against the fused Triton
kernel, same run, with the largest probability difference. Development probe (issue 6)."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_gptoss import gpu_ms  # noqa: E402

from gptoss_viz.runtime.kernels.fused import top_predictions_fused  # noqa: E402
from gptoss_viz.trace import top_predictions_torch as torch_top  # noqa: E402  (what ran on the GPU before)


R = {"gpu": torch.cuda.get_device_name(), "rows": []}
for T in (128, 1024, 2048, 4096):
    logits = (3 * torch.randn(T, 201088, device="cuda")).to(torch.bfloat16)
    a, b = torch_top(logits), top_predictions_fused(logits, 5)
    row = {"T": T, "torch_ms": gpu_ms(lambda: torch_top(logits)),
           "fused_ms": gpu_ms(lambda: top_predictions_fused(logits, 5)),
           "max_prob_diff": (a[0] - b[0]).abs().max().item(),
           "ids_hold_same_logits": bool(torch.equal(logits.gather(-1, a[1]), logits.gather(-1, b[1])))}
    print(json.dumps(row), flush=True)
    R["rows"].append(row)
Path(sys.argv[1]).write_text(json.dumps(R, indent=1))
