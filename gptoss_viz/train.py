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
Model training functions will be added below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
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


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    prepare_data(Path(sys.argv[1] if len(sys.argv) > 1 else "nano_data"))
