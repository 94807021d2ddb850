"""Share links: the query string that restores a view, and a bounded, content-addressed store for prompts too
long to fit in a URL. The store only ever writes `<64 hex>.txt` files inside its own folder."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from gptoss_viz.figures.views import TABS

MAX_URL_PROMPT = 1500  # characters of prompt carried in the URL itself; longer prompts are stored
_ID = re.compile(r"^[0-9a-f]{64}$")


class PromptStore:
    """Prompts by sha256, at most `max_files` files and `max_bytes` bytes (oldest evicted first)."""

    def __init__(self, root: str | os.PathLike, max_files: int = 2000, max_bytes: int = 64 << 20,
                 max_prompt_bytes: int = 1 << 20):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_files, self.max_bytes, self.max_prompt_bytes = max_files, max_bytes, max_prompt_bytes
        self._lock = threading.Lock()

    def put(self, text: str) -> str:
        data = text.encode("utf-8")
        if len(data) > self.max_prompt_bytes:
            raise ValueError(f"prompt of {len(data):,} bytes is too large to share (limit {self.max_prompt_bytes:,})")
        pid = hashlib.sha256(data).hexdigest()
        with self._lock:
            path = self.root / f"{pid}.txt"
            if not path.exists():
                tmp = self.root / f".{pid}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, path)
            else:
                path.touch()
            self._evict()
        return pid

    def get(self, pid: str) -> str | None:
        if not isinstance(pid, str) or not _ID.fullmatch(pid):  # fullmatch: "$" would allow a final "\n"
            return None
        path = self.root / f"{pid}.txt"
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _evict(self) -> None:
        files = sorted((p for p in self.root.glob("*.txt") if _ID.match(p.stem)), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and (len(files) > self.max_files or total > self.max_bytes):
            p = files.pop(0)
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


@dataclass
class ViewState:
    """Everything a share link restores."""

    prompt: str = ""
    gptoss: str = "gpt-oss-nano"
    gpt2: str = "gpt2-nano"
    chat: bool = False
    tab: str = "overview"
    layer: int = 1
    head: int = 0
    token: int = -1
    intervention: str = ""  # gptoss_viz.interventions.Intervention text form


def to_query(v: ViewState, store: PromptStore) -> str:
    """The '?...' query string of a view; a long prompt goes to the store and the link carries its id."""
    q = {"gptoss": v.gptoss, "gpt2": v.gpt2, "tab": v.tab, "layer": v.layer, "head": v.head, "token": v.token}
    if v.chat:
        q["chat"] = 1
    if v.intervention:
        q["iv"] = v.intervention
    if len(v.prompt) <= MAX_URL_PROMPT:
        q["prompt"] = v.prompt
    else:
        q["pid"] = store.put(v.prompt)
    return "?" + urlencode(q)


def from_query(params: dict, store: PromptStore, allowed_gptoss: list[str], allowed_gpt2: list[str],
               default: ViewState) -> tuple[ViewState, list[str]]:
    """Parse query parameters; anything invalid falls back to the default, with a notice saying what."""
    notices: list[str] = []
    v = ViewState(**vars(default))
    if "pid" in params:
        text = store.get(str(params["pid"]))
        if text is None:
            notices.append("the shared prompt id is unknown or expired; showing the default prompt")
        else:
            v.prompt = text
    elif "prompt" in params:
        v.prompt = str(params["prompt"])
    for key, allowed in (("gptoss", allowed_gptoss), ("gpt2", allowed_gpt2)):
        if key in params:
            if params[key] in allowed:
                setattr(v, key, params[key])
            else:
                notices.append(f"model {str(params[key])[:80]!r} is not offered here; using {getattr(v, key)}")
    if "tab" in params:
        if params["tab"] in TABS + ("census", "interventions"):
            v.tab = params["tab"]
        else:
            notices.append(f"unknown tab {str(params['tab'])[:40]!r}; showing {v.tab}")
    for key, lo, hi in (("layer", 0, 10_000), ("head", 0, 10_000), ("token", -1, 1_000_000)):
        if key in params:
            try:
                n = int(params[key])
                if not lo <= n <= hi:
                    raise ValueError
                setattr(v, key, n)
            except (TypeError, ValueError):
                notices.append(f"ignored invalid {key}={str(params[key])[:20]!r}")
    v.chat = str(params.get("chat", "0")) in ("1", "true")
    if "iv" in params:
        from gptoss_viz.errors import InputError
        from gptoss_viz.interventions import Intervention

        try:
            v.intervention = Intervention.from_str(str(params["iv"])).to_str()
        except InputError as e:
            notices.append(f"ignored the intervention in the link: {e}")
    return v, notices
