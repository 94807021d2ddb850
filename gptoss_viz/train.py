"""Recipe that trains the bundled nano models (gpt-oss-nano and gpt2-nano).

This module currently holds the data part of the recipe:

1. ``fetch_corpus``   - download Debian's ``python3.11-doc`` package and turn the
                        reStructuredText sources it ships into ``corpus.txt``
                        (plus ``corpus.json`` with provenance and document bounds).
2. ``load_documents`` - read ``corpus.txt`` back as a list of documents.
3. ``split_corpus``   - deterministic train/validation split by whole documents.
4. ``train_tokenizer``- byte-level BPE tokenizer carrying the gpt-oss harmony
                        special tokens.
5. ``tokenize_to_file``- encode documents into a flat uint16 ``.npy`` array.

``prepare_data`` runs all of the above in one working directory.

Then the models (on a GPU; the GPU machine has no internet, so the data folder travels with the job):

6. ``nano_configs``   - the two architectures: every gpt-oss-20b feature at toy size, and a GPT-2 of similar
                        active size, sharing the tokenizer.
7. ``fit``            - train one model on the same token stream (same batches, same steps) with AdamW; gpt-oss
                        adds a Switch-style load-balancing loss, GPT-2 keeps its dropout on while training.
8. ``export``         - write the Hub-format checkpoint (gpt-oss experts quantized to MXFP4, bf16 elsewhere).

``python -m gptoss_viz.train data DIR`` prepares the data (CPU); ``python -m gptoss_viz.train fit DIR OUT`` trains
both models and exports them with their metrics; ``python -m gptoss_viz.train cards DIR OUT`` writes the model
cards. Everything is seeded; see the model cards for the numbers each run gave.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

log = logging.getLogger(__name__)

PACKAGE = "python3.11-doc"
# Where the package keeps the reStructuredText sources of the HTML docs.
SOURCES_DIR = "usr/share/doc/python3.11/html/_sources"
SOURCES_GLOB = "**/*.rst.txt"
COPYRIGHT_FILE = f"usr/share/doc/{PACKAGE}/copyright"
LICENCE = (
    "PSF-2.0 (Python Software Foundation License Version 2, per "
    f"{COPYRIGHT_FILE}; the docs' license.rst adds that code examples in the "
    "documentation are dual licensed PSF-2.0 / 0BSD)"
)
DOC_SEPARATOR = "\n\n"  # a blank line between documents in corpus.txt

# gpt-oss "harmony" special tokens. train_tokenizer gives them the fixed ids
# 0..8 in this order (e.g. <|startoftext|> = 0, <|endoftext|> = 1); the 256 byte
# symbols and the learned BPE merges follow from id 9 on.
SPECIAL_TOKENS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
]
EOT = "<|endoftext|>"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(cmd: list[str], cwd: Path) -> str:
    log.debug("running %s in %s", " ".join(cmd), cwd)
    result = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return result.stdout


# --------------------------------------------------------------------------- corpus


def fetch_corpus(workdir: Path) -> Path:
    """Build ``workdir/corpus.txt`` from the Debian ``python3.11-doc`` package.

    Downloads the .deb with ``apt-get download`` (skipped if one is already in
    ``workdir``), unpacks it into ``workdir/python3.11-doc/`` and concatenates
    every ``*.rst.txt`` source in sorted path order, separated by a blank line.
    Each document has its trailing whitespace stripped, so the separator is
    unambiguous. Writes ``corpus.json`` (package, version, licence, counts,
    sha256 and the per-document lengths used by ``load_documents``).
    Returns the path of ``corpus.txt``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        log.info("downloading %s with apt-get", PACKAGE)
        _run(["apt-get", "download", PACKAGE], cwd=workdir)
        debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"expected exactly one {PACKAGE} .deb in {workdir}, found {debs}")
    deb = debs[0]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], cwd=workdir).strip()
    log.info("using %s (version %s)", deb.name, version)

    unpacked = workdir / PACKAGE
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], cwd=workdir)

    copyright_text = (unpacked / COPYRIGHT_FILE).read_text(encoding="utf-8", errors="replace")
    if "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" not in copyright_text:
        raise RuntimeError(f"unexpected licence in {COPYRIGHT_FILE}; check it by hand")

    source_root = unpacked / SOURCES_DIR
    paths = sorted(source_root.glob(SOURCES_GLOB), key=lambda p: p.relative_to(source_root).as_posix())
    if not paths:
        raise RuntimeError(f"no {SOURCES_GLOB} files under {source_root}")
    documents = [p.read_text(encoding="utf-8").rstrip() for p in paths]

    corpus = DOC_SEPARATOR.join(documents) + "\n"
    corpus_bytes = corpus.encode("utf-8")
    corpus_path = workdir / "corpus.txt"
    corpus_path.write_bytes(corpus_bytes)

    info = {
        "package": PACKAGE,
        "version": version,
        "deb": deb.name,
        "deb_sha256": _sha256(deb.read_bytes()),
        "licence": LICENCE,
        "source": f"{SOURCES_DIR}/{SOURCES_GLOB}",
        "num_documents": len(documents),
        "bytes": len(corpus_bytes),
        "sha256": _sha256(corpus_bytes),
        "separator": DOC_SEPARATOR,
        # [relative path, length in characters] for every document, in order.
        "documents": [[p.relative_to(source_root).as_posix(), len(d)] for p, d in zip(paths, documents)],
    }
    (workdir / "corpus.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s: %d documents, %d bytes", corpus_path, len(documents), len(corpus_bytes))
    return corpus_path


def load_documents(workdir: Path) -> list[str]:
    """Return the documents of ``workdir/corpus.txt`` (written by ``fetch_corpus``).

    Documents themselves contain blank lines, so they are cut out using the
    lengths recorded in ``corpus.json`` rather than by re-splitting the text.
    """
    workdir = Path(workdir)
    info = json.loads((workdir / "corpus.json").read_text(encoding="utf-8"))
    data = (workdir / "corpus.txt").read_bytes()
    if _sha256(data) != info["sha256"]:
        raise RuntimeError("corpus.txt does not match the sha256 in corpus.json")
    text = data.decode("utf-8")

    documents, pos = [], 0
    for _, length in info["documents"]:
        documents.append(text[pos : pos + length])
        pos += length + len(info["separator"])
    return documents


def split_corpus(
    documents: Sequence[str], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split whole documents into (train_documents, val_documents).

    Each document is ranked by sha256(f"{seed}:{document}") and the first
    ``round(val_fraction * n)`` (at least 1) go to validation. The result only
    depends on the documents' contents and the seed (not on Python's ``random``
    or the input order); both lists keep the input order.
    """
    if isinstance(documents, str):
        raise TypeError("split_corpus takes a sequence of documents, not one string")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    if len(documents) < 2:
        raise ValueError("need at least two documents to split")

    n_val = min(len(documents) - 1, max(1, round(val_fraction * len(documents))))
    rank = sorted(
        range(len(documents)),
        key=lambda i: (_sha256(f"{seed}:{documents[i]}".encode("utf-8")), i),
    )
    val_ids = set(rank[:n_val])
    train = [d for i, d in enumerate(documents) if i not in val_ids]
    val = [d for i, d in enumerate(documents) if i in val_ids]
    return train, val


# ------------------------------------------------------------------------ tokenizer


def train_tokenizer(train_texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``train_texts``.

    ``vocab_size`` is the total size: the 9 harmony special tokens (ids 0..8,
    in ``SPECIAL_TOKENS`` order), the 256 byte symbols and the learned merges.
    Specials are added as special tokens, so each one in the input text encodes
    to a single id. No normaliser: ``decode(encode(x)) == x`` for text without
    special tokens. ``encode(text).offsets`` are character offsets into
    ``text``; ``processors.ByteLevel(trim_offsets=True)`` leaves a token's
    leading space out of its span (a lone-space token gets an empty span), and
    the byte tokens that make up one multi-byte character all get that
    character's span.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_texts, trainer=trainer)
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i, special
    assert tok.get_vocab_size() <= vocab_size
    log.info("trained tokenizer with %d tokens", tok.get_vocab_size())
    return tok


def tokenize_to_file(tok: Tokenizer, texts: Iterable[str], path: Path) -> int:
    """Encode ``texts`` into one flat uint16 array saved with ``np.save``.

    Every document is followed by the ``<|endoftext|>`` id. Returns the number
    of tokens written.
    """
    if tok.get_vocab_size() > 2**16:
        raise ValueError("vocabulary does not fit in uint16")
    eot = tok.token_to_id(EOT)
    pieces = []
    for enc in tok.encode_batch(list(texts)):
        pieces.append(np.asarray(enc.ids, dtype=np.uint16))
        pieces.append(np.array([eot], dtype=np.uint16))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
    np.save(path, tokens)
    log.info("wrote %d tokens to %s", len(tokens), path)
    return int(len(tokens))


# ----------------------------------------------------------------------- all steps


def prepare_data(workdir: Path, vocab_size: int = 8192, val_fraction: float = 0.05, seed: int = 0) -> dict:
    """Fetch, split, train the tokenizer and tokenize, all inside ``workdir``.

    Writes corpus.txt/.json, tokenizer.json, train.npy, val.npy and data.json
    (the returned summary).
    """
    workdir = Path(workdir)
    fetch_corpus(workdir)
    documents = load_documents(workdir)
    train_docs, val_docs = split_corpus(documents, val_fraction=val_fraction, seed=seed)

    start = time.perf_counter()
    tok = train_tokenizer(train_docs, vocab_size=vocab_size)
    tokenizer_seconds = time.perf_counter() - start
    tok.save(str(workdir / "tokenizer.json"))

    train_tokens = tokenize_to_file(tok, train_docs, workdir / "train.npy")
    val_tokens = tokenize_to_file(tok, val_docs, workdir / "val.npy")
    train_chars = sum(len(d) for d in train_docs)
    val_chars = sum(len(d) for d in val_docs)
    summary = {
        "vocab_size": tok.get_vocab_size(),
        "special_token_ids": {s: tok.token_to_id(s) for s in SPECIAL_TOKENS},
        "seed": seed,
        "val_fraction": val_fraction,
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        # characters per token, not counting the <|endoftext|> separators
        "train_chars_per_token": train_chars / (train_tokens - len(train_docs)),
        "val_chars_per_token": val_chars / (val_tokens - len(val_docs)),
        "tokenizer_train_seconds": round(tokenizer_seconds, 2),
    }
    (workdir / "data.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log.info("data ready in %s: %s", workdir, summary)
    return summary


# -------------------------------------------------------------------------------------------------- models

SEED = 0
CONTEXT = 512  # training context: four windows of 128, so sliding and full layers see different things
BATCH = 32  # sequences per step: 16,384 tokens
LR = 3e-3  # peak learning rate (AdamW, 5% warm-up, cosine to 0)
AUX_COEF = 0.03  # weight of the load-balancing loss (gpt-oss only)


def nano_configs(vocab_size: int = 8192):
    """(GptOssConfig, GPT2Config) of the bundled nano models."""
    from gptoss_viz.runtime.configs import GPT2Config, GptOssConfig, RopeScaling

    ids = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    gptoss = GptOssConfig(
        vocab_size=vocab_size, hidden_size=192, intermediate_size=192, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32,  # GQA: 4 query heads share each K/V head
        num_local_experts=32, num_experts_per_tok=4,  # as gpt-oss-20b
        sliding_window=128, layer_types=("sliding_attention", "full_attention") * 2,
        max_position_embeddings=131072, rope_theta=150000.0, rope_scaling=RopeScaling(),  # 20b's YaRN settings
        eos_token_id=ids["<|return|>"], pad_token_id=ids["<|endoftext|>"], quant_method="mxfp4")
    gpt2 = GPT2Config(vocab_size=vocab_size, n_positions=CONTEXT, n_embd=224, n_layer=4, n_head=7,
                      eos_token_id=ids["<|endoftext|>"])
    return gptoss, gpt2


def init_weights(model, seed: int):
    """GPT-2 style init: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers); sinks and biases 0."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    n_layers = len(model.blocks)
    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
            torch.nn.init.ones_(p)
        elif p.dim() == 1 or name.endswith("sinks"):
            torch.nn.init.zeros_(p)
        else:
            std = 0.02
            if name.endswith(("o_proj.weight", "down_proj", "attn.c_proj.weight", "mlp.c_proj.weight")):
                std /= math.sqrt(2 * n_layers)
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def batches(tokens: np.ndarray, seed: int):
    """The same endless stream of (x, y) batches [BATCH, CONTEXT] for both models: random crops of the train text."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(tokens) - CONTEXT - 1, size=BATCH)
        chunk = np.stack([tokens[s:s + CONTEXT + 1] for s in starts]).astype(np.int64)
        yield chunk[:, :-1], chunk[:, 1:]


def load_balancing_loss(router_logits, k: int):
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4) for top-k routing: E * sum_e f_e * P_e,
    f_e = share of the T*k assignments that went to expert e, P_e = mean router probability of e. 1 when even."""
    import torch

    logits = router_logits.reshape(-1, router_logits.shape[-1]).float()  # [N, E]
    E = logits.shape[-1]
    probs = logits.softmax(-1)
    chosen = logits.topk(k, -1).indices  # [N, k]
    f = torch.zeros(E, device=logits.device).scatter_add_(0, chosen.flatten(), torch.ones(chosen.numel(),
                                                          device=logits.device)) / chosen.numel()
    return E * (f * probs.mean(0)).sum()


@dataclass
class FitResult:
    steps: int
    tokens: int
    seconds: float
    curve: list  # [step, train loss, val loss or None]


def evaluate(model, val: np.ndarray, device, max_windows: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) on consecutive CONTEXT-token windows of the held-out tokens."""
    import torch
    import torch.nn.functional as F

    n = (len(val) - 1) // CONTEXT
    n = n if max_windows is None else min(n, max_windows)
    x = torch.from_numpy(val[: n * CONTEXT].astype(np.int64)).view(n, CONTEXT)
    y = torch.from_numpy(val[1: n * CONTEXT + 1].astype(np.int64)).view(n, CONTEXT)
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 8):
            logits = model(x[i:i + 8].to(device)).float()
            total += F.cross_entropy(logits.flatten(0, 1), y[i:i + 8].to(device).flatten(), reduction="sum").item()
    model.train(was_training)
    return total / (n * CONTEXT)


def fit(model, train: np.ndarray, val: np.ndarray, steps: int, device, lr: float = LR, aux_coef: float = AUX_COEF,
        max_seconds: float | None = None, eval_every: int = 100, seed: int = SEED) -> FitResult:
    """AdamW with linear warm-up and cosine decay, bf16 autocast, gradient clipping at 1."""
    import math

    import torch
    import torch.nn.functional as F

    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, steps // 20)
    router_hooks, captured = [], []
    if hasattr(model.config, "num_local_experts"):
        router_hooks = [(f"blocks.{i}.mlp.hook_router_logits", lambda x, h: captured.append(x))
                        for i in range(len(model.blocks))]
        k = model.config.num_experts_per_tok
    curve, start, step, total = [], time.perf_counter(), 0, steps
    stream = batches(train, seed)
    while step < total:
        step += 1
        if max_seconds is not None and step == 21:  # fix the schedule's length from the measured speed
            total = min(total, int(max_seconds / ((time.perf_counter() - start) / 20)))
            log.info("%.3f s/step: training for %d steps", (time.perf_counter() - start) / 20, total)
        warm = step / warmup
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        for group in opt.param_groups:
            group["lr"] = lr * (warm if step <= warmup else cosine)
        xb, yb = next(stream)
        x, y = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
        captured.clear()
        with model.hooks(router_hooks), torch.autocast(device.type, dtype=torch.bfloat16,
                                                       enabled=device.type == "cuda"):
            logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            aux = sum(load_balancing_loss(r, k) for r in captured) / len(captured) if captured else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + aux_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % eval_every == 0 or step == total:
            v = evaluate(model, val, device, max_windows=64)
            curve.append([step, round(loss.item(), 4), round(v, 4)])
            log.info("step %d  loss %.4f  aux %.3f  val %.4f  %.0fs", step, loss.item(), aux.item(), v,
                     time.perf_counter() - start)
    model.eval()
    return FitResult(step, step * BATCH * CONTEXT, time.perf_counter() - start, curve)


def export(model, out_dir: Path, tokenizer_json: Path | None, quantize: bool = True) -> Path:
    """Write the Hub-format checkpoint: gpt-oss with MXFP4 experts + bf16 elsewhere; GPT-2 in bf16."""
    import torch

    from gptoss_viz.runtime.checkpoints import gpt2_hub_tensors, gptoss_hub_tensors, save_hub_checkpoint

    model = model.to("cpu").float()
    if hasattr(model.config, "num_local_experts"):
        tensors = gptoss_hub_tensors(model, quantize=quantize)
    else:
        tensors = ((n, t.to(torch.bfloat16)) for n, t in gpt2_hub_tensors(model, prefixed=False)
                   if not n.endswith(".attn.bias"))  # the causal-mask buffers carry no weights
    return save_hub_checkpoint(out_dir, model.config.to_dict(), tensors, tokenizer_json=tokenizer_json)


def train_both(data_dir: Path, out_dir: Path, steps: int, max_seconds: float, device: str = "cuda") -> dict:
    """Train gpt-oss-nano (time-capped), then gpt2-nano for exactly as many steps on the same batches; export."""
    import torch

    from gptoss_viz.runtime.gpt2 import GPT2
    from gptoss_viz.runtime.gptoss import GptOss

    torch.manual_seed(SEED)
    dev = torch.device(device)
    train = np.load(data_dir / "train.npy")
    val = np.load(data_dir / "val.npy")
    cfg_oss, cfg_gpt2 = nano_configs()
    metrics = {"context": CONTEXT, "batch": BATCH, "seed": SEED, "device": torch.cuda.get_device_name(dev)
               if dev.type == "cuda" else "cpu", "torch": torch.__version__}
    for name, model, limit in (("gpt-oss-nano", init_weights(GptOss(cfg_oss, packed=False), SEED), max_seconds),
                               ("gpt2-nano", init_weights(GPT2(cfg_gpt2), SEED), None)):
        res = fit(model, train, val, steps, dev, max_seconds=limit)
        steps = res.steps  # gpt2-nano trains on exactly the tokens gpt-oss-nano saw
        val_full = evaluate(model, val, dev)
        export(model, out_dir / name, tokenizer_json=None)  # the tokenizer is added with the model card
        metrics[name] = {"steps": res.steps, "tokens": res.tokens, "seconds": round(res.seconds, 1),
                         "curve": res.curve, "val_loss_before_export": round(val_full, 4),
                         "params": sum(p.numel() for p in model.parameters()), "lr": LR,
                         "aux_coef": AUX_COEF if name == "gpt-oss-nano" else None}
        log.info("%s: %s", name, {k: v for k, v in metrics[name].items() if k != "curve"})
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return metrics


# ----------------------------------------------------------------------------------- evaluation and cards

SLICE_WINDOWS = 8  # the fixed held-out slice: 8 windows of CONTEXT tokens, shipped as text next to the models


def heldout_loss(model, text: str, windows: int = SLICE_WINDOWS) -> float:
    """Mean next-token cross-entropy (nats) of `model` on `text`, encoded by its own tokenizer and cut into
    consecutive CONTEXT-token windows (at most `windows`). The test recomputes the model cards' figure with it."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(model.tokenizer.encode(text))
    n = min(windows, (len(ids) - 1) // CONTEXT)
    if n < 1:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one {CONTEXT}-token window")
    x = ids[: n * CONTEXT].view(n, CONTEXT)
    y = ids[1: n * CONTEXT + 1].view(n, CONTEXT)
    with torch.no_grad():
        logits = model(x).float()
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()


def mechanics_stats(model, val: np.ndarray, max_windows: int | None = None) -> dict:
    """Held-out routing shares and entropy per layer, sink mass per layer (gpt-oss) or first-token attention
    mass per layer (GPT-2), from the hooks of real forward passes over CONTEXT-token windows of `val`."""
    import math

    import torch

    n = (len(val) - 1) // CONTEXT
    n = n if max_windows is None else min(n, max_windows)
    x = torch.from_numpy(val[: n * CONTEXT].astype(np.int64)).view(n, CONTEXT)
    layers = len(model.blocks)
    if hasattr(model.config, "num_local_experts"):
        E = model.config.num_local_experts
        counts, sink = torch.zeros(layers, E), torch.zeros(layers)
        want = lambda name: name.endswith(("hook_expert_idx", "hook_sink_prob"))  # noqa: E731
        for i in range(0, n, 8):
            _, cache = model.run_with_cache(x[i:i + 8], names_filter=want)
            for layer in range(layers):
                idx = cache[f"blocks.{layer}.mlp.hook_expert_idx"]
                counts[layer] += torch.bincount(idx.flatten(), minlength=E).float()
                sink[layer] += cache[f"blocks.{layer}.attn.hook_sink_prob"].float().mean(dim=(-1, -2)).sum()
        share = counts / counts.sum(1, keepdim=True)
        entropy = -(share * share.clamp_min(1e-12).log()).sum(1) / math.log(E)
        return {"expert_share_min": share.min(1).values.tolist(), "expert_share_max": share.max(1).values.tolist(),
                "routing_entropy": entropy.tolist(), "sink_mass": (sink / n).tolist()}
    first = torch.zeros(layers)
    for i in range(0, n, 8):
        _, cache = model.run_with_cache(x[i:i + 8], names_filter=lambda name: name.endswith("hook_pattern"))
        for layer in range(layers):
            # attention paid to position 0 by every later query (row 0 can only attend to itself)
            first[layer] += cache[f"blocks.{layer}.attn.hook_pattern"][..., 1:, 0].mean(dim=(-1, -2)).sum()
    return {"first_token_mass": (first / n).tolist()}


def write_cards(data_dir: Path, trained_dir: Path, model_dir: Path) -> dict:
    """Install the trained checkpoints into `model_dir` with tokenizer, held-out slice and model cards.

    Every figure in a card is computed here on the CPU from the exported files (the quantized checkpoint as
    users load it), except the training curve and the pre-export loss, which come from the GPU run's metrics.
    """
    import shutil

    import torch

    from gptoss_viz.runtime.checkpoints import load_model

    metrics = json.loads((trained_dir / "metrics.json").read_text())
    corpus = json.loads((data_dir / "corpus.json").read_text())
    data = json.loads((data_dir / "data.json").read_text())
    val = np.load(data_dir / "val.npy")
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(data_dir / "tokenizer.json"))
    # the fixed slice: the held-out text of the first SLICE_WINDOWS windows (+ margin), as text
    slice_text = tok.decode(val[: (SLICE_WINDOWS + 1) * CONTEXT + 64].tolist(), skip_special_tokens=False)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "heldout-slice.txt").write_text(slice_text, encoding="utf-8")
    summary = {}
    for name in ("gpt-oss-nano", "gpt2-nano"):
        out = model_dir / name
        out.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(trained_dir / name / f, out / f)
        shutil.copyfile(data_dir / "tokenizer.json", out / "tokenizer.json")
        model = load_model(out, dtype=torch.float32)
        m = metrics[name]
        stats = mechanics_stats(model, val)
        info = {
            "val_loss_after_export": round(evaluate(model, val, torch.device("cpu")), 4),
            "slice_loss": round(heldout_loss(model, slice_text), 4),
            "checkpoint_bytes": (out / "model.safetensors").stat().st_size,
            "params": model.config.parameter_counts(),
            **{k: [round(v, 4) for v in vs] for k, vs in stats.items()},
        }
        summary[name] = info
        (out / "README.md").write_text(_card(name, model.config, m, info, metrics, corpus, data), encoding="utf-8")
        log.info("%s: %s", name, info)
    return summary


def _card(name, cfg, m, info, metrics, corpus, data) -> str:
    is_oss = name == "gpt-oss-nano"
    curve = "\n".join(f"| {s} | {tr:.3f} | {va:.3f} |" for s, tr, va in m["curve"])
    if is_oss:
        arch = (f"gpt-oss architecture at toy size: {cfg.num_hidden_layers} layers alternating sliding-window "
                f"({cfg.sliding_window} tokens) and full attention, width {cfg.hidden_size}, "
                f"{cfg.num_attention_heads} query heads sharing {cfg.num_key_value_heads} key/value heads (GQA), "
                f"head dim {cfg.head_dim}, learned attention sinks, attention biases, RoPE with gpt-oss-20b's YaRN "
                f"settings (theta {cfg.rope_theta:g}, factor {cfg.rope_scaling.factor:g}, beta 32/1, original "
                f"context {cfg.rope_scaling.original_max_position_embeddings}), {cfg.num_local_experts} experts with "
                f"top-{cfg.num_experts_per_tok} routing, clamped SwiGLU (limit {cfg.swiglu_limit:g}), RMSNorm, "
                "untied lm_head. Expert weights ship in MXFP4 (quantized after training), everything else in bf16.")
        mech = ("| layer | type | least-used expert share | most-used share | routing entropy (normalised) "
                "| mean sink mass |\n|---|---|---|---|---|---|\n" + "\n".join(
                    f"| {i} | {cfg.layer_types[i].split('_')[0]} | {info['expert_share_min'][i]:.2%} | "
                    f"{info['expert_share_max'][i]:.2%} | {info['routing_entropy'][i]:.3f} | {info['sink_mass'][i]:.3f} |"
                    for i in range(cfg.num_hidden_layers)))
        extra = (f"Load-balancing loss (Switch Transformer style) weight {m['aux_coef']}. Loss of the dense fp32 "
                 f"weights before export: **{m['val_loss_before_export']:.4f}**; after MXFP4 quantization of the experts "
                 f"and bf16 rounding of the rest: **{info['val_loss_after_export']:.4f}**.")
    else:
        arch = (f"GPT-2 architecture: {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, MLP width "
                f"{cfg.inner_size}, GELU (tanh), LayerNorm, learned absolute positions ({cfg.n_positions}), tied "
                "lm_head, dropout 0.1 while training. Weights ship in bf16 (names as in openai-community/gpt2).")
        mech = ("| layer | mean attention on the first token (emergent sink) |\n|---|---|\n" + "\n".join(
            f"| {i} | {v:.3f} |" for i, v in enumerate(info["first_token_mass"])))
        extra = (f"Loss of the fp32 weights before export: **{m['val_loss_before_export']:.4f}**; after bf16 "
                 f"rounding: **{info['val_loss_after_export']:.4f}**.")
    p = info["params"]
    return f"""---
license: other
license_name: psf-2.0
language: en
library_name: gptoss-viz
tags: [explainer, {'gpt-oss, mixture-of-experts, mxfp4' if is_oss else 'gpt2'}]
---
# {name}

A tiny {'gpt-oss' if is_oss else 'GPT-2'} trained by gptoss-viz (`python -m gptoss_viz.train`) so that the explainer
shows learned behaviour off-line on a CPU. **It is for explaining mechanics** (routing, sinks, windows, positions),
**not for answering questions**: it has seen 2.7 M tokens of Python documentation and writes plausible-looking
reStructuredText fragments, nothing more.

## Architecture
{arch}

Parameters: {p['total']:,} in all, {p['active']:,} active per token without embeddings and head.
Checkpoint: {info['checkpoint_bytes'] / 1e6:.1f} MB (`model.safetensors`, Hugging Face format: loads with
`gptoss_viz.load_model("model/{name}")` and with transformers' `{'GptOssForCausalLM' if is_oss else 'GPT2LMHeadModel'}`).

## Data
Debian's `{corpus['package']}` {corpus['version']} (reStructuredText sources of the Python 3.11 documentation,
{corpus['num_documents']} documents, {corpus['bytes'] / 1e6:.1f} MB, sha256 `{corpus['sha256'][:16]}...`).
Licence: {corpus['licence']}. Split by whole documents (seed {data['seed']}): {data['train_documents']} train
documents ({data['train_tokens']:,} tokens), {data['val_documents']} held-out documents ({data['val_tokens']:,} tokens).
Tokenizer: byte-level BPE, {data['vocab_size']} tokens including the harmony special tokens (ids 0-8), trained on
the train split only and shared by gpt-oss-nano and gpt2-nano, so their views are comparable token for token.

## Training
{metrics['device']}, torch {metrics['torch']}, seed {metrics['seed']}: {m['steps']} steps of {metrics['batch']} x
{metrics['context']} tokens ({m['tokens']:,} tokens, the same batches for both nano models), AdamW (betas 0.9/0.95,
weight decay 0.1), peak learning rate {m['lr']}, 5% warm-up then cosine, bf16 autocast, gradient clipping 1.0;
{m['seconds']:.0f} s. {extra}

| step | train loss | held-out loss (first 64 windows) |
|---|---|---|
{curve}

## Held-out results (measured on the CPU from the shipped files)
- Held-out loss, all {data['val_tokens']:,} held-out tokens in {metrics['context']}-token windows:
  **{info['val_loss_after_export']:.4f}** nats/token.
- Held-out loss on the fixed slice (`model/heldout-slice.txt`, {SLICE_WINDOWS} windows): **{info['slice_loss']:.4f}**
  nats/token (the tests recompute this figure).

{mech}
"""


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ap = argparse.ArgumentParser(prog="python -m gptoss_viz.train", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("data", help="fetch the corpus, train the tokenizer, tokenize (CPU, needs apt)")
    a.add_argument("dir", type=Path)
    a = sub.add_parser("fit", help="train and export both models (GPU)")
    a.add_argument("dir", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--steps", type=int, default=1200)
    a.add_argument("--max-minutes", type=float, default=4.0, help="time cap for gpt-oss-nano")
    a.add_argument("--device", default="cuda")
    a = sub.add_parser("cards", help="install trained checkpoints into model/ with evaluated model cards (CPU)")
    a.add_argument("dir", type=Path, help="data folder (tokenizer.json, val.npy, corpus.json, data.json)")
    a.add_argument("trained", type=Path, help="the fit command's output folder")
    a.add_argument("--out", type=Path, default=Path("model"))
    args = ap.parse_args()
    if args.cmd == "data":
        prepare_data(args.dir)
    elif args.cmd == "fit":
        train_both(args.dir, args.out, args.steps, args.max_minutes * 60, args.device)
    elif args.cmd == "cards":
        write_cards(args.dir, args.trained, args.out)
