"""Loading: memory of the default load, clear errors for bad models and bad input, Hub ids through the local HF
cache (no network), the off-line message, and which Hub files a download fetches.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import struct

import pytest
import torch

from conftest import TEXT, make_gpt2_dir, make_gptoss_dir
from gptoss_viz import InputError, ModelLoadError, load_model
from gptoss_viz.runtime import checkpoints


def checkpoint_tensor_bytes(path) -> int:
    """Sum of the tensor data sizes in every safetensors file of a checkpoint, read from the files' headers."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def model_bytes(m) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


@pytest.fixture
def no_network(monkeypatch):
    """Hub off-line mode, and any socket connection fails the test: nothing here may touch the network."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"test: network access attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"the loader tried to reach the network: {attempts}"


def as_hf_cache(cache_dir, repo: str, src, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay out `src` as the HF cache does: models--{org}--{name}/refs/main holds the commit, the snapshot holds
    the files."""
    root = cache_dir / ("models--" + repo.replace("/", "--"))
    shutil.copytree(src, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)  # the HF cache writes the hash without a newline
    (root / "blobs").mkdir()
    return root


def expect_load_error(source, *fragments, **kw):
    with pytest.raises(ModelLoadError) as e:
        load_model(source, **kw)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, f"load error for {source!s} should mention {frag!r}; message was: {msg}"
    return msg


@pytest.fixture
def gpt2_copy(tmp_path, tokenizer_json):
    return make_gpt2_dir(tmp_path / "gpt2", tokenizer_json, prefixed=False)


@pytest.fixture
def gptoss_copy(tmp_path, tokenizer_json):
    return make_gptoss_dir(tmp_path / "gptoss", tokenizer_json, seed=4)


# ---------------------------------------------------------------------------------------------------------------
# Memory of the default load

def test_default_load_keeps_experts_packed_and_checkpoint_size(gptoss_dir):
    m = load_model(gptoss_dir)
    for i, block in enumerate(m.blocks):
        ex = block.mlp.experts
        assert ex.packed, f"layer {i}: experts were dequantized on load"
        for n in ("gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales"):
            assert getattr(ex, n).dtype == torch.uint8, f"layer {i} {n} is {getattr(ex, n).dtype}, expected uint8"
        assert not hasattr(ex, "gate_up_proj"), f"layer {i}: a dense expert weight exists next to the packed one"
    assert m.embed_tokens.weight.dtype == torch.bfloat16, "default load must keep the checkpoint's bf16"
    ours, ckpt = model_bytes(m), checkpoint_tensor_bytes(gptoss_dir)
    assert abs(ours - ckpt) <= 0.05 * ckpt, f"model holds {ours} bytes for a checkpoint of {ckpt} tensor bytes"


def test_float32_load_still_keeps_experts_packed(gptoss_dir):
    m = load_model(gptoss_dir, dtype=torch.float32)
    assert m.embed_tokens.weight.dtype == torch.float32
    assert m.blocks[0].mlp.experts.gate_up_proj_blocks.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------------------------
# Bad models

def test_unknown_model_id():
    msg = expect_load_error("not a model !!", "not a model !!")
    assert "Hub" in msg and "local directory" in msg, f"message does not say what a valid source is: {msg}"


def test_empty_source():
    expect_load_error("", "no model given")


def test_directory_without_config(tmp_path, gpt2_copy):
    d = tmp_path / "noconfig"
    d.mkdir()
    shutil.copy(gpt2_copy / "model.safetensors", d)
    expect_load_error(d, "no config.json", str(d))


def test_a_file_instead_of_a_directory(gpt2_copy):
    expect_load_error(gpt2_copy / "model.safetensors", "is a file", "directory")


def test_unsupported_model_type(gpt2_copy):
    cfg = json.loads((gpt2_copy / "config.json").read_text())
    cfg["model_type"] = "llama"
    (gpt2_copy / "config.json").write_text(json.dumps(cfg))
    expect_load_error(gpt2_copy, "unsupported model_type", "'llama'", "gpt2", "gpt_oss")


def test_config_missing_required_field(gpt2_copy):
    cfg = json.loads((gpt2_copy / "config.json").read_text())
    del cfg["n_head"]
    (gpt2_copy / "config.json").write_text(json.dumps(cfg))
    expect_load_error(gpt2_copy, "n_head")


def test_tensor_shape_mismatch(gpt2_copy):
    from safetensors.torch import load_file, save_file

    f = gpt2_copy / "model.safetensors"
    t = load_file(str(f))
    t["h.1.ln_2.weight"] = torch.ones(47)
    save_file(t, str(f), metadata={"format": "pt"})
    expect_load_error(gpt2_copy, "h.1.ln_2.weight", "[47]", "[48]")


def test_missing_tensor(gpt2_copy):
    from safetensors.torch import load_file, save_file

    f = gpt2_copy / "model.safetensors"
    t = load_file(str(f))
    del t["h.2.mlp.c_fc.bias"]
    save_file(t, str(f), metadata={"format": "pt"})
    expect_load_error(gpt2_copy, "missing", "2.mlp.c_fc.bias")


def test_unexpected_tensor(gpt2_copy):
    from safetensors.torch import load_file, save_file

    f = gpt2_copy / "model.safetensors"
    t = load_file(str(f))
    t["h.0.attn.q_norm.weight"] = torch.ones(48)
    save_file(t, str(f), metadata={"format": "pt"})
    expect_load_error(gpt2_copy, "h.0.attn.q_norm.weight")


@pytest.mark.parametrize("keep", [0.5, 0.999, 20], ids=["half", "last-bytes", "header-only"])
def test_truncated_safetensors_shard(gptoss_copy, keep):
    shard = sorted(gptoss_copy.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    n = int(len(data) * keep) if keep < 1 else keep
    shard.write_bytes(data[:n])
    expect_load_error(gptoss_copy, shard.name, "truncated or corrupt")


def test_shard_listed_in_index_missing(gptoss_copy):
    shard = sorted(gptoss_copy.glob("model-*.safetensors"))[-1]
    shard.unlink()
    expect_load_error(gptoss_copy, "missing", shard.name)


def test_pickle_only_directory_refused(tmp_path, gpt2_copy):
    d = tmp_path / "pickle"
    d.mkdir()
    shutil.copy(gpt2_copy / "config.json", d)
    shutil.copy(gpt2_copy / "tokenizer.json", d)
    torch.save({"wte.weight": torch.zeros(2, 2)}, d / "pytorch_model.bin")
    msg = expect_load_error(d, "pytorch_model.bin", "pickle", "model.safetensors")
    assert "never loaded" in msg


def test_missing_tokenizer(gpt2_copy):
    (gpt2_copy / "tokenizer.json").unlink()
    expect_load_error(gpt2_copy, "tokenizer.json")


# ---------------------------------------------------------------------------------------------------------------
# Bad input

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tokenizer_json):
    return load_model(make_gpt2_dir(tmp_path_factory.mktemp("gpt2in"), tokenizer_json, prefixed=True))


@pytest.fixture(scope="module")
def gptoss(gptoss_dir):
    return load_model(gptoss_dir)


def expect_input_error(m, ids, *fragments):
    with pytest.raises(InputError) as e:
        m(ids)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, f"input error should mention {frag!r}; message was: {msg}"


@pytest.mark.parametrize("which", ["gpt2", "gptoss"])
def test_bad_input_ids(which, gpt2, gptoss):
    m = gpt2 if which == "gpt2" else gptoss
    V = m.config.vocab_size
    expect_input_error(m, torch.tensor([], dtype=torch.long), "empty")
    expect_input_error(m, torch.tensor([1, 2, V]), str(V), "out of range")
    expect_input_error(m, torch.tensor([1, -1, 2]), "-1", "out of range")
    expect_input_error(m, torch.tensor([1.0, 2.0]), "integer", "float32")
    expect_input_error(m, [1, 2, 3], "integer")
    expect_input_error(m, torch.ones(2, 2, 2, dtype=torch.long), "shape")
    assert issubclass(InputError, ValueError)


def test_sequence_longer_than_positions(gpt2):
    n = gpt2.config.n_positions
    assert n == 64
    gpt2(torch.zeros(n, dtype=torch.long))  # exactly n positions is fine
    expect_input_error(gpt2, torch.zeros(n + 1, dtype=torch.long), str(n + 1), str(n))


# ---------------------------------------------------------------------------------------------------------------
# Hub ids through the local HF cache

def test_hub_alias_loads_from_hf_cache(tmp_path, gptoss_dir, no_network):
    cache = tmp_path / "hub"
    as_hf_cache(cache, "openai/gpt-oss-20b", gptoss_dir)
    via_hub = load_model("gpt-oss-20b", cache_dir=cache, dtype=torch.float32)
    direct = load_model(gptoss_dir, dtype=torch.float32)
    ids = torch.tensor(direct.tokenizer.encode(TEXT[:50]))
    with torch.no_grad():
        a, b = via_hub(ids), direct(ids)
    assert torch.equal(a, b), f"Hub-cache load differs from the directory load by {(a - b).abs().max():.3g}"
    assert via_hub.tokenizer.encode(TEXT[:50]) == ids.tolist()
    full_id = load_model("openai/gpt-oss-20b", cache_dir=cache, dtype=torch.float32)
    assert torch.equal(full_id(ids), b)


def test_gpt2_hub_id_loads_from_hf_cache(tmp_path, gpt2_copy, no_network):
    cache = tmp_path / "hub"
    as_hf_cache(cache, "openai-community/gpt2", gpt2_copy, commit="f" * 40)
    via_hub = load_model("openai-community/gpt2", cache_dir=cache)
    direct = load_model(gpt2_copy)
    ids = torch.tensor(direct.tokenizer.encode(TEXT[:50]))
    with torch.no_grad():
        assert torch.equal(via_hub(ids), direct(ids)), "Hub-cache GPT-2 load differs from the directory load"
    alias = load_model("gpt2", cache_dir=cache)
    assert torch.equal(alias(ids), direct(ids))


def test_not_cached_offline_error_says_how_to_get_it(tmp_path, no_network):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    msg = expect_load_error("gpt-oss-20b", "openai/gpt-oss-20b", "hf download", "cache", cache_dir=empty)
    expect_load_error("someone/some-model", "someone/some-model", "hf download", cache_dir=empty)
    # the suggested command, run on the real repo's file list, fetches the HF-format files and no extra copies
    from huggingface_hub.utils import filter_repo_objects

    cmd = re.search(r"`(hf download [^`]*)`", msg)
    assert cmd, f"no `hf download ...` command in the message: {msg}"
    args = shlex.split(cmd.group(1))
    assert args[2] == "openai/gpt-oss-20b", f"the command downloads {args[2]!r}"
    include = args[args.index("--include") + 1: args.index("--exclude")] if "--exclude" in args else \
        args[args.index("--include") + 1:]
    exclude = args[args.index("--exclude") + 1:] if "--exclude" in args else None
    fetched = set(filter_repo_objects(REAL_20B_FILES, allow_patterns=include, ignore_patterns=exclude))
    assert not {f for f in fetched if f.startswith(("original/", "metal/"))}, \
        f"the suggested command also fetches the original/ or metal/ copies: {sorted(fetched)}"
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= fetched and \
        sum(f.endswith(".safetensors") for f in fetched) == 3, f"the suggested command misses files: {sorted(fetched)}"


REAL_20B_FILES = [
    ".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja", "config.json",
    "generation_config.json", "metal/model.bin", "model-00000-of-00002.safetensors",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "original/config.json", "original/dtypes.json", "original/model.safetensors", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json",
]


def test_hub_download_fetches_only_hf_format_files():
    from huggingface_hub.utils import filter_repo_objects

    fetched = set(filter_repo_objects(REAL_20B_FILES, allow_patterns=checkpoints.HUB_ALLOW,
                                      ignore_patterns=checkpoints.HUB_IGNORE))
    copies = sorted(f for f in fetched if f.startswith(("original/", "metal/")))
    assert not copies, f"a Hub download would also fetch the duplicate weights {copies}"
    needed = {"config.json", "model.safetensors.index.json", "model-00000-of-00002.safetensors",
              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"}
    assert needed <= fetched, f"a Hub download would miss {sorted(needed - fetched)}"
    unneeded = sorted(fetched - needed - {"generation_config.json", "tokenizer_config.json",
                                          "special_tokens_map.json"})
    assert not unneeded, f"a Hub download would fetch files the loader never reads: {unneeded}"
    # GPT-2's repo: model.safetensors plus TF/Flax/ONNX/pickle variants
    gpt2_files = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
                  "rust_model.ot", "onnx/decoder_model.onnx", "64-8bits.tflite", "tokenizer.json", "vocab.json",
                  "merges.txt", "generation_config.json", "tokenizer_config.json", "README.md"]
    fetched2 = set(filter_repo_objects(gpt2_files, allow_patterns=checkpoints.HUB_ALLOW,
                                       ignore_patterns=checkpoints.HUB_IGNORE))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched2, f"GPT-2 download misses files: {sorted(fetched2)}"
    assert not fetched2 & {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot",
                           "onnx/decoder_model.onnx", "64-8bits.tflite"}, f"GPT-2 download fetches {fetched2}"


@pytest.mark.parametrize("change, fragment", [
    ({"activation_function": "gelu"}, "'gelu'"),  # exact erf GELU: the model computes the tanh approximation
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
], ids=["erf-gelu", "inverse-layer-scaling", "unscaled-attention"])
def test_gpt2_config_variants_the_model_does_not_compute_are_refused(gpt2_copy, change, fragment):
    cfg = json.loads((gpt2_copy / "config.json").read_text())
    cfg.update(change)
    (gpt2_copy / "config.json").write_text(json.dumps(cfg))
    expect_load_error(gpt2_copy, fragment)
