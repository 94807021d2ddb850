"""The models the web app may load: bundled, the Hub list of DESIGN.md, and local checkpoints the operator
names on the command line. Each is loaded once, lazily, and shared read-only by every user."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from gptoss_viz.errors import ModelLoadError

log = logging.getLogger(__name__)

GPTOSS_CHOICES = ["gpt-oss-nano", "openai/gpt-oss-20b", "openai/gpt-oss-120b"]
GPT2_CHOICES = ["gpt2-nano", "openai-community/gpt2", "openai-community/gpt2-medium",
                "openai-community/gpt2-large", "openai-community/gpt2-xl"]


@dataclass
class Registry:
    device: str = "cpu"
    extra_gptoss: list[str] = field(default_factory=list)  # operator-added local checkpoints
    extra_gpt2: list[str] = field(default_factory=list)
    _models: dict = field(default_factory=dict, repr=False)
    _locks: dict = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def gptoss_choices(self) -> list[str]:
        return GPTOSS_CHOICES + [m for m in self.extra_gptoss if m not in GPTOSS_CHOICES]

    @property
    def gpt2_choices(self) -> list[str]:
        return GPT2_CHOICES + [m for m in self.extra_gpt2 if m not in GPT2_CHOICES]

    def allowed(self, name: str) -> bool:
        return name in self.gptoss_choices or name in self.gpt2_choices

    def get(self, name: str, progress=None):
        """The loaded model `name` (loading it on first use). Only names on the lists can be loaded."""
        if not self.allowed(name):
            raise ModelLoadError(f"model {name!r} is not offered by this app; choose one from the list")
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per model even when many users ask at once
            if name not in self._models:
                from gptoss_viz import load_model

                # bf16 matrix products are emulated (slow) on most CPUs: full precision there
                dtype = torch.float32 if self.device == "cpu" else None
                log.info("loading %s on %s", name, self.device)
                self._models[name] = load_model(name, device=self.device, dtype=dtype,
                                                tqdm_class=progress)
            return self._models[name]

    def loaded(self) -> list[str]:
        return list(self._models)
