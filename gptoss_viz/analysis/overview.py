"""The overview card: what changed from GPT-2 to gpt-oss, with live numbers from the loaded configs, plus the
next-token predictions and the alignment of two tokenizations of the same text."""

from __future__ import annotations

from gptoss_viz.runtime.configs import GPT2Config, GptOssConfig


def kv_cache_bytes(cfg, n_tokens: int, bytes_per_value: int = 2) -> int:
    """Bytes of keys and values cached for a context of n_tokens: sliding layers keep only their window."""
    if isinstance(cfg, GptOssConfig):
        per_tok_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * bytes_per_value
        return sum(per_tok_layer * (min(n_tokens, cfg.sliding_window) if t == "sliding_attention" else n_tokens)
                   for t in cfg.layer_types)
    return cfg.n_layer * 2 * cfg.n_embd * bytes_per_value * n_tokens


def architecture_rows(oss: GptOssConfig, gpt2: GPT2Config, context: int = 4096) -> list[dict]:
    """The seven changes, each with GPT-2's and gpt-oss's live values and one line of why."""
    po, pg = oss.parameter_counts(), gpt2.parameter_counts()
    full_kv = 2 * oss.num_hidden_layers * oss.num_attention_heads * oss.head_dim * 2  # MHA, no window, per token
    gqa_kv = 2 * oss.num_hidden_layers * oss.num_key_value_heads * oss.head_dim * 2
    n_sliding = sum(t == "sliding_attention" for t in oss.layer_types)
    return [
        {"change": "Dropout removed", "gpt2": f"{gpt2.resid_pdrop:g} in training", "gptoss": "none",
         "why": "one pass over huge data barely overfits; dropout only slows learning there"},
        {"change": "Absolute positions -> RoPE", "gpt2": f"learned table of {gpt2.n_positions} positions",
         "gptoss": (f"rotation of q and k, theta {oss.rope_theta:g}"
                    + (f", YaRN x{oss.rope_scaling.factor:g}" if oss.rope_scaling else "")),
         "why": "relative position enters every attention score; YaRN stretches the slow pairs for long context"},
        {"change": "GELU -> gated SwiGLU", "gpt2": f"GELU, {gpt2.inner_size} wide",
         "gptoss": f"clamped SwiGLU (limit {oss.swiglu_limit:g}), {oss.intermediate_size} wide per expert",
         "why": "a gate multiplies the hidden unit: more expressive per parameter"},
        {"change": "Dense MLP -> mixture of experts", "gpt2": "1 MLP per layer",
         "gptoss": f"{oss.num_local_experts} experts, top-{oss.num_experts_per_tok} per token",
         "why": f"{po['total']:,} parameters in all but only {po['active']:,} active per token"},
        {"change": "Multi-head -> grouped-query attention", "gpt2": f"{gpt2.n_head} K/V heads",
         "gptoss": f"{oss.num_attention_heads} query heads share {oss.num_key_value_heads} K/V heads",
         "why": f"KV cache per token {gqa_kv:,} B instead of {full_kv:,} B ({full_kv // gqa_kv}x smaller)"},
        {"change": "Sliding-window attention", "gpt2": "every layer sees everything",
         "gptoss": f"{n_sliding} of {oss.num_hidden_layers} layers see the last {oss.sliding_window} tokens",
         "why": (f"at {context:,} tokens the KV cache is {kv_cache_bytes(oss, context) / 2**20:.1f} MiB "
                 f"instead of {gqa_kv * context / 2**20:.1f} MiB")},
        {"change": "LayerNorm -> RMSNorm", "gpt2": "mean and variance, with bias", "gptoss": "RMS only, no bias",
         "why": "cheaper, and works as well"},
        {"change": "Parameters (total / active)", "gpt2": f"{pg['total']:,} / {pg['active']:,}",
         "gptoss": f"{po['total']:,} / {po['active']:,}", "why": "active = per token, without embeddings and head"},
    ]


def predictions(trace, position: int = -1) -> list[tuple[str, float]]:
    """The model's top-5 next tokens after `position` with their probabilities."""
    p = position % trace.T
    return [(tok, float(prob)) for tok, prob in zip(trace.top_tokens[p], trace.top_probs[p])]


def align_tokens(a, b) -> list[tuple[list[int], list[int]]]:
    """Group tokens of two traces of the same text into aligned runs: each group is (indices in a, indices in b)
    covering the same characters, so the two tokenizations can be drawn one above the other."""
    if a.text != b.text:
        raise ValueError("the two traces tokenized different texts; align only raw-text traces of one prompt")
    groups, i, j = [], 0, 0
    while i < a.T and j < b.T:
        ga, gb = [i], [j]
        end_a, end_b = a.offsets[i][1], b.offsets[j][1]
        while end_a != end_b:
            if end_a < end_b and ga[-1] + 1 < a.T:
                ga.append(ga[-1] + 1)
                end_a = max(end_a, a.offsets[ga[-1]][1])
            elif end_b < end_a and gb[-1] + 1 < b.T:
                gb.append(gb[-1] + 1)
                end_b = max(end_b, b.offsets[gb[-1]][1])
            else:
                break
        groups.append((ga, gb))
        i, j = ga[-1] + 1, gb[-1] + 1
    if i < a.T or j < b.T:
        groups.append((list(range(i, a.T)), list(range(j, b.T))))
    return groups
