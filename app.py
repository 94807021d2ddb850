"""gptoss-viz: start the explainer. Flags (or environment variables) choose models, device, host and port.

    python app.py                         # the bundled nano models on the CPU, http://127.0.0.1:7860
    python app.py --gptoss openai/gpt-oss-20b --device cuda
    GPTOSS_VIZ_PORT=8000 python app.py --host 0.0.0.0

Off-line it still starts: the bundled models need no network; a Hub model that is not cached says so when chosen.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(description="gptoss-viz: GPT-2 vs gpt-oss, live")
    ap.add_argument("--gptoss", default=env("GPTOSS_VIZ_GPTOSS", "gpt-oss-nano"),
                    help="default gpt-oss model: bundled name, Hub id, or a local directory (added to the list)")
    ap.add_argument("--gpt2", default=env("GPTOSS_VIZ_GPT2", "gpt2-nano"), help="default GPT-2 model, likewise")
    ap.add_argument("--device", default=env("GPTOSS_VIZ_DEVICE", "auto"), help="cpu, cuda, cuda:1 or auto")
    ap.add_argument("--host", default=env("GPTOSS_VIZ_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")))
    ap.add_argument("--port", type=int, default=int(env("GPTOSS_VIZ_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    ap.add_argument("--max-tokens", type=int, default=int(env("GPTOSS_VIZ_MAX_TOKENS", "0")) or None,
                    help="longest prompt in tokens (default 1024 on CPU, 4096 on GPU)")
    ap.add_argument("--data-dir", default=env("GPTOSS_VIZ_DATA", str(Path.home() / ".cache" / "gptoss-viz")),
                    help="where shared long prompts are stored (bounded)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from gptoss_viz import prefer_expandable_segments

    prefer_expandable_segments()  # before torch touches CUDA
    from gptoss_viz.ui.launch import launch

    launch(args)


if __name__ == "__main__":
    main()
