"""Census data-parallel over 2 GPUs with NCCL equals one process on one GPU (needs a 2-GPU machine; skipped
elsewhere). The CPU version with gloo runs in CI (test_census.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from gptoss_viz.runtime.checkpoints import REPO_ROOT
from test_census import PROMPTS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for NCCL")]


def test_nccl_two_gpus_equal_one_gpu(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": t * (1 + i % 3), "label": "a" if i % 2 else "b"})
                                 for i, t in enumerate(PROMPTS * 4)), encoding="utf-8")
    args = ["census", str(prompts), "--model", "gpt-oss-nano", "--gpt2", "gpt2-nano", "--batch-tokens", "256"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "gptoss_viz", *args, "--device", "cuda:0", "--out", str(one)],
                   check=True, cwd=REPO_ROOT, timeout=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "-m", "gptoss_viz", *args, "--device", "cuda",
                           "--out", str(two)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["models"]["gpt-oss-nano"]["labels"]["(all)"]["prompts"] == len(PROMPTS) * 4
    assert a == b, "two GPUs (NCCL) and one GPU disagree"
