"""From parsed flags to a running server (kept out of app.py so the tests can build the same app)."""

from __future__ import annotations

import json
from pathlib import Path

from gptoss_viz.ui.app import ASSETS, AppConfig, build_app
from gptoss_viz.ui.registry import GPT2_CHOICES, GPTOSS_CHOICES, Registry
from gptoss_viz.ui.share import PromptStore, ViewState


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_config(gptoss: str = "gpt-oss-nano", gpt2: str = "gpt2-nano", device: str = "cpu",
                max_tokens: int | None = None, data_dir: str | Path | None = None, queue_size: int = 16) -> AppConfig:
    """The app's configuration; local directories passed as defaults join the model lists (operator's choice)."""
    device = resolve_device(device)
    registry = Registry(device=device,
                        extra_gptoss=[gptoss] if gptoss not in GPTOSS_CHOICES else [],
                        extra_gpt2=[gpt2] if gpt2 not in GPT2_CHOICES else [])
    examples = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
    store = PromptStore(Path(data_dir or Path.home() / ".cache" / "gptoss-viz") / "prompts")
    default = ViewState(prompt=examples[0]["prompt"], gptoss=gptoss, gpt2=gpt2)
    return AppConfig(registry=registry, store=store, default=default, queue_size=queue_size,
                     max_tokens=max_tokens or (1024 if device == "cpu" else 4096))


def launch_kwargs() -> dict:
    """CSS, and plotly.js served with the page for the tab-to-PNG button (works off-line)."""
    import plotly

    js_dir = Path(plotly.__file__).parent / "package_data"
    return {"css": (ASSETS / "style.css").read_text(encoding="utf-8"),
            "head": f'<script src="/gradio_api/file={js_dir / "plotly.min.js"}"></script>',
            "allowed_paths": [str(js_dir / "plotly.min.js")],
            "max_file_size": "5mb"}  # the census limit: bigger uploads are refused by the server itself


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas. Gradio serves each request from a pool of threads and glibc gives threads their
    own arenas, which fragment: a soak on loopback grew the server by 12% per 8 requests with the default cap and
    stayed flat with 2. No-op (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def launch(args) -> None:
    limit_malloc_arenas()
    cfg = make_config(args.gptoss, args.gpt2, args.device, args.max_tokens, args.data_dir)
    demo = build_app(cfg)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False, **launch_kwargs())
