"""The allocator settings the app and the command line start with (gptoss_viz.prefer_expandable_segments): on a
16 GB card the 4096-token full trace of gpt-oss-20b needs PyTorch's expandable segments (benchmarks/
gpu_memory_cap.py), and a user's own PYTORCH_CUDA_ALLOC_CONF is left as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptoss_viz import prefer_expandable_segments

ROOT = Path(__file__).resolve().parents[1]


def test_expandable_segments_by_default_and_the_users_setting_kept(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:256")
    prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:256"


def test_app_and_command_line_prefer_them_before_torch_starts():
    """Both entry points call it before importing anything that imports torch (the setting is read when CUDA's
    allocator starts)."""
    for path, call in ((ROOT / "app.py", "prefer_expandable_segments()"),
                       (ROOT / "gptoss_viz" / "__main__.py", "prefer_expandable_segments()")):
        src = path.read_text()
        assert call in src, f"{path.name} does not call {call}"
        before = src[:src.index(call)]
        for heavy in ("import torch", "gptoss_viz.ui", "gptoss_viz.census"):
            assert heavy not in before, f"{path.name} imports {heavy!r} before {call}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_allocator_takes_them_on_the_gpu():
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    code = ("from gptoss_viz import prefer_expandable_segments; prefer_expandable_segments(); import torch; "
            "x = torch.empty(64 << 20, dtype=torch.uint8, device='cuda'); "
            "segs = torch.cuda.memory_snapshot(); "
            "print(sorted(segs[0]) if segs else [], [s.get('is_expandable') for s in segs])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags = out.stdout.strip().rsplit("[", 1)[-1]  # (the first list: a segment's keys, to read a failure)
    assert "True" in flags and "False" not in flags, f"segments not expandable: {out.stdout.strip()}"
