"""Frozen architecture configs built straight from a checkpoint's `config.json`.

Field names equal the keys of the Hugging Face `config.json` (as in OpenAI's gpt-oss reference code), so a
config is `GptOssConfig.from_dict(json.load(f))`. Facts and defaults follow ../shared/SPEC.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from gptoss_viz.errors import ModelLoadError


@dataclass(frozen=True)
class RopeScaling:
    """YaRN context extension (arXiv 2309.00071) as gpt-oss configures it."""

    rope_type: str = "yarn"  # "yarn" or "default" (plain RoPE)
    factor: float = 32.0  # context extension factor: slow pairs are interpolated by 1/factor
    beta_fast: float = 32.0  # pairs rotating more than beta_fast times in the original context keep their frequency
    beta_slow: float = 1.0  # pairs rotating less than beta_slow times are fully interpolated
    original_max_position_embeddings: int = 4096  # context length the model was pre-trained at
    truncate: bool = False  # gpt-oss: no rounding of the ramp boundaries


@dataclass(frozen=True)
class GptOssConfig:
    """gpt-oss: MoE transformer with GQA, learned attention sinks, alternating sliding/full attention, YaRN."""

    vocab_size: int  # 201088 for o200k_harmony
    hidden_size: int  # d: residual width (2880)
    intermediate_size: int  # per-expert SwiGLU width (2880); gate_up has 2x rows
    num_hidden_layers: int  # 24 (20b) / 36 (120b)
    num_attention_heads: int  # H query heads (64)
    num_key_value_heads: int  # K shared key/value heads (8): GQA, query head h reads KV head h // (H/K)
    head_dim: int  # D (64)
    num_local_experts: int  # E experts per layer (32 / 128)
    num_experts_per_tok: int  # k experts a token is routed to (4)
    sliding_window: int  # keys a sliding layer sees, the query itself included (128)
    layer_types: tuple[str, ...]  # "sliding_attention" / "full_attention" per layer
    max_position_embeddings: int  # longest sequence the positions are defined for (131072)
    rope_theta: float = 150000.0  # RoPE base
    rope_scaling: RopeScaling | None = RopeScaling()  # None = plain RoPE
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0  # clamp of the expert gate (above) and up projection (both sides)
    swiglu_alpha: float = 1.702  # sigmoid gain of the SwiGLU (x * sigmoid(1.702 x) ~ GELU)
    attention_bias: bool = True  # q/k/v/o projections carry biases
    tie_word_embeddings: bool = False  # gpt-oss has its own lm_head
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    quant_method: str | None = None  # "mxfp4" when expert weights are stored packed

    model_type = "gpt_oss"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GptOssConfig":
        _require(d, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "num_local_experts"], "gpt_oss")
        n_layers = int(d["num_hidden_layers"])
        head_dim = int(d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"])
        layer_types = d.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        # Newer transformers write `rope_parameters` (with rope_theta inside) instead of `rope_scaling`.
        rope = d.get("rope_parameters") or d.get("rope_scaling")
        theta = d.get("rope_theta") or (rope or {}).get("rope_theta") or 150000.0
        scaling = None
        if rope and rope.get("rope_type", rope.get("type", "default")) == "yarn":
            scaling = RopeScaling(
                rope_type="yarn",
                factor=float(rope.get("factor", 32.0)),
                beta_fast=float(rope.get("beta_fast", 32.0)),
                beta_slow=float(rope.get("beta_slow", 1.0)),
                original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 4096)),
                truncate=bool(rope.get("truncate", True)),
            )
        elif rope and rope.get("rope_type", rope.get("type", "default")) not in ("default",):
            raise ModelLoadError(f"gpt_oss config: unsupported rope type {rope.get('rope_type')!r} "
                                 "(supported: 'yarn', 'default')")
        quant = d.get("quantization_config") or {}
        cfg = cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d["num_key_value_heads"]),
            head_dim=head_dim,
            num_local_experts=int(d["num_local_experts"]),
            num_experts_per_tok=int(d.get("num_experts_per_tok", d.get("experts_per_token", 4))),
            sliding_window=int(d.get("sliding_window") or 128),
            layer_types=tuple(layer_types),
            max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            swiglu_limit=float(d.get("swiglu_limit", 7.0)),
            swiglu_alpha=float(d.get("swiglu_alpha", 1.702)),
            attention_bias=bool(d.get("attention_bias", True)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            eos_token_id=_first(d.get("eos_token_id")),
            pad_token_id=_first(d.get("pad_token_id")),
            quant_method=quant.get("quant_method"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        err = []
        if len(self.layer_types) != self.num_hidden_layers:
            err.append(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        bad = set(self.layer_types) - {"sliding_attention", "full_attention"}
        if bad:
            err.append(f"unknown layer types {sorted(bad)}")
        if self.num_attention_heads % self.num_key_value_heads:
            err.append(f"{self.num_attention_heads} query heads do not divide into "
                       f"{self.num_key_value_heads} key/value heads")
        if self.head_dim % 2:
            err.append(f"head_dim {self.head_dim} must be even for RoPE")
        if not 0 < self.num_experts_per_tok <= self.num_local_experts:
            err.append(f"num_experts_per_tok {self.num_experts_per_tok} not in 1..{self.num_local_experts}")
        if self.quant_method not in (None, "mxfp4"):
            err.append(f"unsupported quantization {self.quant_method!r} (supported: mxfp4 or none)")
        if self.quant_method == "mxfp4" and (self.hidden_size % 32 or self.intermediate_size % 32):
            err.append("MXFP4 needs hidden_size and intermediate_size divisible by 32 (the block size)")
        if err:
            raise ModelLoadError("invalid gpt_oss config: " + "; ".join(err))

    def to_dict(self) -> dict[str, Any]:
        """The config.json form (Hub field names), for writing checkpoints."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layer_types"] = list(self.layer_types)
        d.pop("quant_method")
        d.pop("rope_scaling")
        if self.rope_scaling is not None:
            d["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
        if self.quant_method == "mxfp4":
            d["quantization_config"] = {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"]}
        d["model_type"] = self.model_type
        d["architectures"] = ["GptOssForCausalLM"]
        d["num_experts_per_tok"] = self.num_experts_per_tok
        return d

    # Derived sizes, used by the overview card and the loader.
    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def parameter_counts(self) -> dict[str, int]:
        """Total and active (per token, excluding embeddings and head) parameter counts."""
        d, i, e, k = self.hidden_size, self.intermediate_size, self.num_local_experts, self.num_experts_per_tok
        hq, hk, hd = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        attn = d * hq * hd + hq * hd + 2 * (d * hk * hd + hk * hd) + hq * hd * d + d + hq
        expert = d * 2 * i + 2 * i + i * d + d
        router = e * d + e
        norms = 2 * d
        per_layer_total = attn + router + e * expert + norms
        per_layer_active = attn + router + k * expert + norms
        emb = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        n = self.num_hidden_layers
        return {"total": n * per_layer_total + emb + head + d,
                "active": n * per_layer_active + d}


@dataclass(frozen=True)
class GPT2Config:
    """GPT-2: dense pre-LayerNorm transformer with learned absolute positions (Radford et al. 2019)."""

    vocab_size: int  # 50257
    n_positions: int  # 1024 learned position embeddings: the longest sequence
    n_embd: int  # d (768)
    n_layer: int  # 12
    n_head: int  # H (12); head dim D = n_embd / n_head
    n_inner: int | None = None  # MLP width; None = 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"  # tanh approximation of GELU
    eos_token_id: int | None = 50256
    # Dropout exists only in training (0.1 in GPT-2); inference never applies it.
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1

    model_type = "gpt2"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GPT2Config":
        _require(d, ["vocab_size", "n_embd", "n_layer", "n_head"], "gpt2")
        # Attention scalings some GPT-2-type configs switch on; the model implements only the original 1/sqrt(D).
        odd = {k: d[k] for k, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False))
               if k in d and d[k] != default}
        if odd:
            raise ModelLoadError(f"unsupported gpt2 attention variant in config.json: {odd} "
                                 "(this app runs the original GPT-2 attention)")
        cfg = cls(
            vocab_size=int(d["vocab_size"]),
            n_positions=int(d.get("n_positions", d.get("n_ctx", 1024))),
            n_embd=int(d["n_embd"]),
            n_layer=int(d["n_layer"]),
            n_head=int(d["n_head"]),
            n_inner=d.get("n_inner"),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            activation_function=str(d.get("activation_function", "gelu_new")),
            eos_token_id=_first(d.get("eos_token_id", 50256)),
            resid_pdrop=float(d.get("resid_pdrop", 0.1)),
            embd_pdrop=float(d.get("embd_pdrop", 0.1)),
            attn_pdrop=float(d.get("attn_pdrop", 0.1)),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ModelLoadError(f"invalid gpt2 config: n_embd {self.n_embd} not divisible by n_head {self.n_head}")
        # The model computes GPT-2's tanh approximation; "gelu" means the exact erf GELU, which differs by ~1e-3.
        if self.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ModelLoadError(f"invalid gpt2 config: unsupported activation {self.activation_function!r} "
                                 "(supported: 'gelu_new', 'gelu_pytorch_tanh', the tanh approximation of GELU)")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model_type"] = self.model_type
        d["architectures"] = ["GPT2LMHeadModel"]
        d["bos_token_id"] = self.eos_token_id
        return d

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    def parameter_counts(self) -> dict[str, int]:
        d, f, n = self.n_embd, self.inner_size, self.n_layer
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        emb = self.vocab_size * d + self.n_positions * d
        return {"total": n * per_layer + emb + 2 * d, "active": n * per_layer + 2 * d}


CONFIG_CLASSES = {"gpt_oss": GptOssConfig, "gpt2": GPT2Config}


def config_from_dict(d: Mapping[str, Any]):
    """Pick the architecture by `model_type` and build its config."""
    mt = d.get("model_type")
    if mt not in CONFIG_CLASSES:
        raise ModelLoadError(f"unsupported model_type {mt!r} in config.json: this app runs "
                             f"{sorted(CONFIG_CLASSES)} checkpoints")
    return CONFIG_CLASSES[mt].from_dict(d)


def _require(d: Mapping[str, Any], keys: list[str], arch: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ModelLoadError(f"{arch} config.json lacks required field(s): {', '.join(missing)}")


def _first(x):
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    return None if x is None else int(x)

