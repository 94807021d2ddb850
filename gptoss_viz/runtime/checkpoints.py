"""Find a model's files (bundled / local directory / Hugging Face Hub id) and load its safetensors into our model.

Only safetensors are ever read (no pickle, no remote code). Tensors stream one at a time from the file straight
to the target device, so host memory peaks near the largest tensor, and MXFP4 experts stay packed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from gptoss_viz.errors import ModelLoadError
from gptoss_viz.runtime.configs import GPT2Config, GptOssConfig, config_from_dict
from gptoss_viz.runtime.mxfp4 import check_scales

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = {"gpt-oss-nano": REPO_ROOT / "model" / "gpt-oss-nano", "gpt2-nano": REPO_ROOT / "model" / "gpt2-nano"}
HUB_ALIASES = {
    "gpt-oss-20b": "openai/gpt-oss-20b",
    "gpt-oss-120b": "openai/gpt-oss-120b",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# Only the Hugging Face format files at the top of the repo: gpt-oss repos also hold original/ and metal/ copies
# of the same weights (another ~13 GB each), and GPT-2 repos hold TF/Flax/ONNX/pickle variants.
HUB_ALLOW = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
HUB_IGNORE = ["*/*"]  # nothing in subfolders
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


# ---------------------------------------------------------------------------------------------------------------
# Resolving a source to a directory

def resolve(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None, tqdm_class=None) -> Path:
    """A bundled name, a local HF-format directory, or a Hub id/alias -> a directory holding config.json."""
    s = str(source).strip()
    if not s:
        raise ModelLoadError("no model given: pass a bundled name, a local directory or a Hub id")
    path = Path(s).expanduser()
    if path.is_dir():
        return _checked_dir(path, s)
    if path.exists():
        raise ModelLoadError(f"model {s!r} is a file; pass the directory that holds config.json and the weights")
    if s in BUNDLED:
        if not (BUNDLED[s] / "config.json").is_file():
            raise ModelLoadError(f"the bundled model {s!r} is missing from {BUNDLED[s].parent}; "
                                 "rebuild it with `python -m gptoss_viz.train`")
        return BUNDLED[s]
    repo = HUB_ALIASES.get(s, s)
    if not _REPO_ID.match(repo) or ".." in repo:
        raise ModelLoadError(
            f"unknown model {s!r}: not a local directory, not a bundled model ({', '.join(BUNDLED)}), "
            f"not a Hub alias ({', '.join(HUB_ALIASES)}) and not a Hub id like 'openai/gpt-oss-20b'")
    return _checked_dir(download(repo, cache_dir, tqdm_class), repo)


def _checked_dir(path: Path, name: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {name!r} has no config.json: not a Hugging Face format checkpoint")
    return path


def download(repo: str, cache_dir=None, tqdm_class=None) -> Path:
    """Fetch only the HF-format files of a Hub repo (reusing the local HF cache) and return the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    kw = dict(allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE, cache_dir=cache_dir)
    try:  # a complete cached snapshot needs no network at all
        snap = Path(snapshot_download(repo, local_files_only=True, **kw))
        if (snap / "config.json").is_file() and any(snap.glob("*.safetensors")):
            return snap
    except LocalEntryNotFoundError:
        pass
    log.info("downloading %s from the Hugging Face Hub (HF-format files only)", repo)
    try:
        return Path(snapshot_download(repo, tqdm_class=tqdm_class, **kw))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model {repo!r} was not found on the Hugging Face Hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        # --exclude too: "*.safetensors" alone would also match original/model.safetensors (another full copy)
        files = " ".join(f'"{p}"' for p in HUB_ALLOW)
        skip = " ".join(f'"{p}"' for p in HUB_IGNORE)
        raise ModelLoadError(
            f"cannot load {repo!r}: the Hugging Face Hub is unreachable (off-line?) and the model is not in the "
            f"local HF cache. On a machine with internet run `hf download {repo} --include {files} "
            f"--exclude {skip}` and copy "
            "the cache (~/.cache/huggingface/hub or $HF_HOME), or pass a local directory with the files. "
            f"({type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading safetensors

def read_config(path: Path):
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {e}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path / 'config.json'} is not a JSON object")
    return config_from_dict(raw)


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot read {index}: {e}") from None
        names = sorted(set(weight_map.values()))
        for n in names:
            if Path(n).name != n:
                raise ModelLoadError(f"{index} names a shard outside the model directory: {n!r}")
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(f"{path}: shard(s) listed in the index are missing: {', '.join(missing)}")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    pickles = [p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    extra = f" (found {', '.join(pickles)}: pickle formats are never loaded)" if pickles else ""
    raise ModelLoadError(f"{path} has no model.safetensors or model.safetensors.index.json{extra}")


def iter_tensors(files: list[Path], device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in the files, loaded one at a time onto `device`."""
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as st:
                for name in st.keys():
                    yield name, st.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"cannot read {f.name}: truncated or corrupt safetensors file ({e})") from None


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint names -> our module names (one loop; attribute names mirror the checkpoint's)

def gptoss_key(name: str) -> tuple[str | None, Callable | None]:
    """model.layers.L.self_attn.q_proj.weight -> blocks.L.attn.q_proj.weight (and a transform, if any)."""
    key = name.removeprefix("model.")
    key = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", key).replace(".self_attn.", ".attn.")
    # Unquantized checkpoints written by transformers keep expert weights [E, in, out]; we hold [E, out, in].
    if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
        return key, lambda t: t.transpose(1, 2).contiguous()
    return key, None


def gpt2_key(name: str) -> tuple[str | None, Callable | None]:
    """h.L.attn.c_attn.weight or transformer.h.L.attn.c_attn.weight -> blocks.L.attn.c_attn.weight."""
    key = name.removeprefix("transformer.")
    if key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias")):
        return None, None  # tied head / causal-mask buffers: nothing to load
    return re.sub(r"^h\.(\d+)\.", r"blocks.\1.", key), None


def load_state(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], key_fn, dtype=None) -> None:
    """Put every checkpoint tensor into the (meta-initialised) model, checking names, shapes and MXFP4 scales."""
    expected = dict(model.named_parameters())
    expected.update(dict(model.named_buffers()))
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, t in tensors:
        key, transform = key_fn(name)
        if key is None:
            continue
        if key not in expected:
            unexpected.append(name)
            continue
        if transform is not None:
            t = transform(t)
        want = expected[key]
        if tuple(t.shape) != tuple(want.shape):
            raise ModelLoadError(f"tensor {name!r} has shape {list(t.shape)}; the config expects {list(want.shape)}")
        if key.endswith("_scales"):
            try:
                check_scales(t, name)
            except ValueError as e:
                raise ModelLoadError(str(e)) from None
        if t.is_floating_point():
            if not want.is_floating_point():
                raise ModelLoadError(f"tensor {name!r} is {t.dtype}; expected {want.dtype}")
            if dtype is not None:
                t = t.to(dtype)
        elif t.dtype != want.dtype:
            raise ModelLoadError(f"tensor {name!r} is {t.dtype}; expected {want.dtype}")
        _assign(model, key, t)
        loaded.add(key)
    if unexpected:
        raise ModelLoadError(f"checkpoint has tensor(s) this architecture does not use: {', '.join(unexpected[:8])}"
                             + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
    missing = [k for k in expected if k not in loaded]
    if missing:
        raise ModelLoadError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {', '.join(missing[:8])}")


def _assign(model: nn.Module, key: str, t: torch.Tensor) -> None:
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name)
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(t, requires_grad=False)
    else:
        mod._buffers[attr] = t


# ---------------------------------------------------------------------------------------------------------------
# The public entry point

def load_model(source, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               cache_dir=None, tqdm_class=None):
    """Load a gpt-oss or GPT-2 checkpoint (bundled name, local HF-format dir, or Hub id) into our hooked model.

    dtype=None keeps the checkpoint's own dtypes (bf16, MXFP4 packed); dtype=torch.float32 gives full-precision
    weights for exact comparisons (MXFP4 experts still stay packed: they dequantize exactly into fp32).
    """
    from gptoss_viz.runtime.gpt2 import GPT2
    from gptoss_viz.runtime.gptoss import GptOss
    from gptoss_viz.runtime.tokenizer import load_tokenizer

    path = resolve(source, cache_dir, tqdm_class)
    cfg = read_config(path)
    device = torch.device(device or "cpu")
    if isinstance(cfg, GptOssConfig):
        cls, key_fn = GptOss, gptoss_key
    else:
        assert isinstance(cfg, GPT2Config)
        cls, key_fn = GPT2, gpt2_key
    with torch.device("meta"):  # no memory until the real tensors arrive
        model = cls(cfg)
    load_state(model, iter_tensors(weight_files(path), device), key_fn, dtype)
    model.eval()
    if isinstance(model, GptOss) and device.type == "cuda":
        model.prepare_kernels()
    model.tokenizer = load_tokenizer(path, cfg)
    model.source = str(source)
    log.info("loaded %s (%s) from %s on %s", source, cfg.model_type, path, device)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Writing checkpoints in the Hub's format (the nano models, test fixtures, full-size random benchmark weights)

def gptoss_hub_tensors(model, quantize: bool, dtype=torch.bfloat16) -> Iterator[tuple[str, torch.Tensor]]:
    """Our gpt-oss state as Hub-format (name, tensor): bf16 everywhere, expert weights MXFP4 if `quantize`."""
    from gptoss_viz.runtime.mxfp4 import mxfp4_quantize

    for key, t in model.state_dict().items():
        name = "lm_head.weight" if key == "lm_head.weight" else "model." + re.sub(
            r"^blocks\.(\d+)\.", r"layers.\1.", key).replace(".attn.", ".self_attn.")
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            if quantize:
                blocks, scales = mxfp4_quantize(t)  # rows stay (out, in): quantized along the input dimension
                yield name + "_blocks", blocks
                yield name + "_scales", scales
            else:
                yield name, t.transpose(1, 2).to(dtype).contiguous()  # transformers' [E, in, out]
        elif t.is_floating_point():
            yield name, t.to(dtype).contiguous()
        else:
            yield name, t.contiguous()


def gpt2_hub_tensors(model, prefixed: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Our GPT-2 state as Hub-format fp32 tensors: official names (h.0..., with the causal-mask buffers the
    official file carries) or `save_pretrained` names (transformer.h.0..., plus the tied lm_head)."""
    cfg = model.config
    for key, t in model.state_dict().items():
        name = re.sub(r"^blocks\.(\d+)\.", r"h.\1.", key)
        yield ("transformer." + name if prefixed else name), t.float().contiguous()
    if prefixed:
        yield "lm_head.weight", model.wte.weight.detach().float().clone()  # tied: same values, own storage
    else:
        mask = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions)).view(1, 1, cfg.n_positions, cfg.n_positions)
        for i in range(cfg.n_layer):
            yield f"h.{i}.attn.bias", mask.clone()  # safetensors stores no shared memory


def save_hub_checkpoint(out_dir: str | os.PathLike, config_dict: dict, tensors, max_shard_bytes: int | None = None,
                        tokenizer_json: str | os.PathLike | None = None) -> Path:
    """Write config.json + model.safetensors (or shards + model.safetensors.index.json) as the Hub lays them out."""
    import shutil

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().cpu()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata=meta)
            for name, t in shard.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    return out
