"""Fast tests for the data part of gptoss_viz.train (no apt-get, no network)."""

import numpy as np
import pytest

from gptoss_viz.train import EOT, SPECIAL_TOKENS, split_corpus, tokenize_to_file, train_tokenizer

WORDS = "the quick brown fox jumps over lazy dogs naïve café résumé 東京 tokyo — def return".split()
NON_ASCII = "naïve café — 東京\tdone  twice\n\nnext ünïcödé 🙂!"


def make_documents(n=40):
    docs = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(30 + i)]
        docs.append(f"Document {i}\n\n" + " ".join(words) + f"\n\n    code_{i} = {i} * 2\n")
    return docs


@pytest.fixture(scope="module")
def docs():
    return make_documents()


@pytest.fixture(scope="module")
def tok(docs):
    return train_tokenizer(docs, vocab_size=400)


def test_specials_have_fixed_ids_and_encode_as_single_tokens(tok):
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i
        assert tok.encode(special).ids == [i]
    text = "<|start|>user<|message|>hi there<|end|><|endoftext|>"
    ids = tok.encode(text).ids
    for special in ["<|start|>", "<|message|>", "<|end|>", EOT]:
        assert tok.token_to_id(special) in ids
    assert tok.get_vocab_size() <= 400


def test_offsets_are_character_spans_on_non_ascii(tok):
    enc = tok.encode(NON_ASCII)
    # Tokens holding part of one multi-byte character all get that character's
    # span, so group consecutive tokens with equal offsets before decoding.
    groups = []
    for token_id, span in zip(enc.ids, enc.offsets):
        if groups and groups[-1][0] == span:
            groups[-1][1].append(token_id)
        else:
            groups.append((span, [token_id]))
    pieces = []
    for (start, end), ids in groups:
        # trim_offsets: a token's span leaves out its leading space (only " ",
        # not tabs or newlines), so a lone-space token has an empty span.
        assert tok.decode(ids).strip(" ") == NON_ASCII[start:end]
        pieces.append(NON_ASCII[start:end])
    assert "".join(pieces) == NON_ASCII.replace(" ", "")
    assert [s for s, _ in enc.offsets] == sorted(s for s, _ in enc.offsets)


def test_round_trip(tok, docs):
    for text in docs[:5] + [NON_ASCII, "", "  leading spaces", "tabs\tand\r\nCRLF"]:
        assert tok.decode(tok.encode(text).ids) == text


def test_training_is_deterministic(tok, docs):
    assert train_tokenizer(docs, vocab_size=400).to_str() == tok.to_str()


def test_split_is_deterministic_and_by_whole_documents(docs):
    train, val = split_corpus(docs, val_fraction=0.1, seed=3)
    assert (train, val) == split_corpus(list(docs), val_fraction=0.1, seed=3)
    assert len(val) == 4 and len(train) == len(docs) - 4
    assert sorted(train + val) == sorted(docs)
    assert not set(train) & set(val)
    # Order within each side follows the input; input order doesn't change membership.
    assert train == [d for d in docs if d in set(train)]
    assert set(split_corpus(docs[::-1], val_fraction=0.1, seed=3)[1]) == set(val)
    assert set(split_corpus(docs, val_fraction=0.1, seed=4)[1]) != set(val)
    with pytest.raises(TypeError):
        split_corpus("one big string")


def test_tokenize_to_file(tok, docs, tmp_path):
    path = tmp_path / "tokens.npy"
    count = tokenize_to_file(tok, docs[:3], path)
    tokens = np.load(path)
    assert tokens.dtype == np.uint16 and len(tokens) == count
    eot = tok.token_to_id(EOT)
    assert tokens[-1] == eot and int((tokens == eot).sum()) == 3
    cuts = np.flatnonzero(tokens == eot)
    parts = np.split(tokens, cuts + 1)[:-1]
    assert [tok.decode(p[:-1].tolist()) for p in parts] == docs[:3]
