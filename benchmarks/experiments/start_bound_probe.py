"""What the 20b forward's start costs, as an upper bound on anything that shortens it: the eager forward
(`model(ids)`), the same with check_ids skipped, and the blocks, final norm and LM head alone, given the embedding
and the first block's input RMSNorm computed (and finished) before the timed call. The last is GptOss.forward's
loop as it is, so its logits are checked equal to the forward's. Alternating in one process, each call after a
50 ms pause and timed by CUDA events. A fused embedding + first RMSNorm launch could win at most the difference
between the first and the last. Development probe (issue 6).

    python benchmarks/experiments/start_bound_probe.py OUT.json [LENGTHS]
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"))

from eager_gap_probe import timed  # noqa: E402
from probe_setup import probe_setup  # noqa: E402

from gptoss_viz.runtime import gptoss as gptoss_mod  # noqa: E402
from gptoss_viz.runtime.kernels.fused import rms_norm_fused  # noqa: E402


def blocks_only(model, x, h, cos, sin):
    """GptOss.forward after its embedding, with the first block's input norm `h` given (window None)."""
    blocks = model.blocks
    for i, block in enumerate(blocks):
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        norm = model.norm if nxt is None else nxt.input_layernorm if nxt.hook_resid_pre.idle else None
        got = block(x, cos, sin, None, normed=h, next_norm=norm)
        x, h = got if norm is not None else (got, None)
    return model.lm_head(h)


def main() -> None:
    out, cfg, model, R, prompts = probe_setup([1024])
    model.use_kernels = True
    real_check = gptoss_mod.check_ids
    skip = lambda *a, **k: None  # noqa: E731
    for T, ids in prompts:
        with torch.inference_mode():
            for _ in range(3):
                model(ids)
            x = model.embed_tokens(ids)
            ln = model.blocks[0].input_layernorm
            h = rms_norm_fused(x, ln.weight, ln.eps)
            cos, sin = model.rope(T, ids.device, None)
            row = {"T": T, "logits_equal": torch.equal(model(ids), blocks_only(model, x, h, cos, sin))}
            variants = {"eager model(ids)": lambda: model(ids),
                        "check_ids skipped": lambda: model(ids),
                        "blocks only (embedding and first norm done before)": lambda: blocks_only(model, x, h, cos,
                                                                                                  sin)}
            times = {k: [] for k in variants}
            for _ in range(11):
                for name, fn in variants.items():
                    gptoss_mod.check_ids = skip if name == "check_ids skipped" else real_check
                    time.sleep(0.05)
                    times[name].append(timed(fn)[0])
            gptoss_mod.check_ids = real_check
        row["median_ms"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
        row["runs_ms"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
        print(T, row["logits_equal"], row["median_ms"], flush=True)
        R["lengths"].append(row)
    out.write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
