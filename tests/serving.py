"""The app as `python app.py` builds it (bundled nano models, CPU), on 127.0.0.1 and a free port, with the Hub
off-line and an empty HF cache: nothing the tests do can download. Shared by the server, reliability and browser
tests."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(tmp: Path, configure=None, **config):
    """Yield (url, cfg) of a running server; `configure(cfg)` may add models before the app is built."""
    import huggingface_hub.constants

    from gptoss_viz.ui.app import build_app
    from gptoss_viz.ui.launch import launch_kwargs, limit_malloc_arenas, make_config

    limit_malloc_arenas()  # as `python app.py` does
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp / "hf-cache"))  # empty: nothing cached
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        cfg = make_config(data_dir=tmp / "data", **config)
        if configure is not None:
            configure(cfg)
        demo = build_app(cfg)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    show_error=False, **launch_kwargs())
        try:
            yield f"http://127.0.0.1:{port}/", cfg
        finally:
            demo.close()
