"""One prompt through one model -> a Trace: the tokens and the small, reduced tensors the explainer's views need.

The model runs once, with hooks that reduce each big activation on the model's device as it is produced (a
layer's attention pattern [H, T, T] becomes first-token mass, attention mass per distance bucket and the like,
then is dropped), so full attention maps never leave the device. What a Trace holds on the host, per layer:

    both:     resid_norm [L+1, T], first_token_mass [L, H], distance_mass [L, H, B]
    gpt-oss:  sink_prob [L, H, T], sinks [L, H], router_logits [L, T, E], expert_idx / expert_weight [L, T, k]
    GPT-2:    mlp_active [L, T], pos_similarity [P, P] (P = min(T, 1024))
    plus ids, token strings, character offsets and the top-5 next-token predictions [T, 5].

gpt-oss-20b at 4096 tokens holds about 42 MB (sink_prob 25 MB, router logits 13 MB). One head's full pattern is
made on request by `head_pattern`, through the same attention function the model uses, from the rotated q/k the
Trace keeps on the model's device when they are small (the nano models), else by re-running one layer's hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gptoss_viz.errors import InputError
from gptoss_viz.runtime.configs import GptOssConfig
from gptoss_viz.runtime.gpt2 import causal_attention
from gptoss_viz.runtime.gptoss import attention_with_sinks
from gptoss_viz.runtime.hooks import observer

TOP_K_PREDICTIONS = 5
QK_KEEP_BYTES = 64 << 20  # keep every layer's q/k for on-request head patterns only below this size
POS_SIM_MAX = 1024  # GPT-2 position-similarity matrix side limit


def distance_edges(T: int, window: int = 128) -> np.ndarray:
    """Bucket edges for attention distance (query position - key position): 0, 1, 2, 4, ..., with the
    sliding window size as an edge so that 'mass beyond the window' is a sum of whole buckets."""
    edges = [0, 1]
    while edges[-1] < max(T, window + 1):
        edges.append(edges[-1] * 2)
    if window not in edges:
        edges = sorted(set(edges) | {window})
    return np.array(edges, dtype=np.int64)


@dataclass
class Trace:
    model: str  # the source name the model was loaded from
    arch: str  # "gpt_oss" or "gpt2"
    config: object  # the architecture's frozen config
    text: str  # the text the offsets index into (the rendered harmony conversation in chat mode)
    chat: bool
    ids: np.ndarray  # [T]
    tokens: list[str]  # each token's text as shown
    offsets: list[tuple[int, int]]  # [start, end) character span of each token in `text`
    top_ids: np.ndarray  # [T, 5] most likely next tokens
    top_probs: np.ndarray  # [T, 5]
    top_tokens: list[list[str]]  # [T][5] their strings
    resid_norm: np.ndarray  # [L+1, T] residual-stream RMS after the embedding and after each block
    first_token_mass: np.ndarray  # [L, H] mean attention that queries 1.. pay to token 0
    distance_edges: np.ndarray  # [B+1] bucket edges for distance_mass
    distance_mass: np.ndarray  # [L, H, B] mean attention mass per query in each distance bucket
    seconds: float  # wall time of the forward pass with its reductions
    path: str = "reference"  # which implementation ran
    # gpt-oss
    sink_prob: np.ndarray | None = None  # [L, H, T] probability each query parks on its head's sink
    sinks: np.ndarray | None = None  # [L, H] the learned sink logits
    router_logits: np.ndarray | None = None  # [L, T, E] before top-k, bias included
    expert_idx: np.ndarray | None = None  # [L, T, k]
    expert_weight: np.ndarray | None = None  # [L, T, k]
    # GPT-2
    mlp_active: np.ndarray | None = None  # [L, T] share of MLP neurons with a positive pre-activation
    pos_similarity: np.ndarray | None = None  # [P, P] cosine similarity of the position embeddings used
    intervention: object = None  # the Intervention the model ran under, if any
    # on the model's device, for head patterns on request (None when too big: then the layer is re-run)
    _qk: dict | None = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)

    @property
    def T(self) -> int:
        return len(self.ids)

    @property
    def n_layers(self) -> int:
        return self.first_token_mass.shape[0]

    @property
    def n_heads(self) -> int:
        return self.first_token_mass.shape[1]

    def nbytes_host(self) -> int:
        """Bytes of the arrays held on the host (what per-user state costs)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def head_pattern(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One head's attention pattern [T, T] (and its sink probability [T] for gpt-oss), recomputed with the
        model's own attention function from that layer's q/k (kept, or re-captured by re-running the model)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise InputError(f"no layer {layer} / head {head}: the model has {self.n_layers} layers of "
                             f"{self.n_heads} heads")
        if self.intervention is not None and not self.intervention.is_noop():
            return self._pattern_by_rerun(layer, head)
        q, k = self.layer_qk(layer)
        with torch.no_grad():
            if self.arch == "gpt_oss":
                cfg: GptOssConfig = self.config
                kv = head // cfg.kv_groups  # GQA: the key head this query head reads
                attn = self._model.blocks[layer].attn
                sink = attn.sinks[head:head + 1]
                pattern, sink_prob = attention_with_sinks(q[:, head:head + 1], k[:, kv:kv + 1], sink, attn.window)
                return pattern[0].float().cpu().numpy(), sink_prob[0].float().cpu().numpy()
            pattern = causal_attention(q[:, head:head + 1], k[:, head:head + 1])
            return pattern[0].float().cpu().numpy(), None

    def _pattern_by_rerun(self, layer: int, head: int):
        """Under an intervention (which may replace patterns or change the window), re-run it and read the
        layer's pattern and sink probability as the model used them."""
        names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_sink_prob"]
        got: dict = {}
        device = next(self._model.parameters()).device
        ids = torch.as_tensor(self.ids, device=device).long()
        grab = lambda x, h: got.__setitem__(h.name, x.detach())  # noqa: E731
        with torch.no_grad(), self._model.hooks(self.intervention.hooks(self._model, self.T) +
                                                [(n, grab) for n in names]):
            self._model(ids, **self.intervention.forward_kwargs(self.T))
        p = got[names[0]][head].float().cpu().numpy()
        sink = got.get(names[1])
        if sink is None:
            return p, None
        sink = sink[head].float().cpu().numpy()
        return p, (np.zeros_like(sink) if (layer, head) in self.intervention.sinkless(self.config) else sink)

    def layer_qk(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) of one layer as the attention function sees them (rotated for gpt-oss), on the model's device."""
        if self._qk is not None:
            return self._qk[layer]
        names = ([f"blocks.{layer}.attn.hook_q_rot", f"blocks.{layer}.attn.hook_k_rot"] if self.arch == "gpt_oss"
                 else [f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"])
        device = next(self._model.parameters()).device
        _, cache = self._model.run_with_cache(torch.as_tensor(self.ids, device=device).long(), names_filter=names)
        return cache[names[0]], cache[names[1]]


def encode(model, text: str, chat: bool = False):
    """The prompt as the model will see it: plain text, or (gpt-oss) the harmony chat rendering."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty prompt: type some text to analyse")
    if chat:
        if model.config.model_type != "gpt_oss":
            raise InputError("harmony chat format is for gpt-oss models; GPT-2 reads raw text")
        return model.tokenizer.render_harmony(text)
    return model.tokenizer.encode_with_offsets(text)


@torch.no_grad()
def run_trace(model, text: str, chat: bool = False, max_tokens: int | None = None, intervention=None) -> Trace:
    """Tokenize `text`, run the model once with reducing hooks, and return the Trace. With an `intervention`
    (gptoss_viz.interventions.Intervention) its hooks run first, so the Trace shows the changed model."""
    enc = encode(model, text, chat)
    cfg = model.config
    limit = min(cfg.max_position_embeddings, max_tokens or cfg.max_position_embeddings)
    if len(enc.ids) > limit:
        raise InputError(f"the prompt is {len(enc.ids)} tokens long; this model takes at most {limit} here")
    if not enc.ids:
        raise InputError("the prompt produced no tokens")
    device = next(model.parameters()).device
    ids = torch.tensor(enc.ids, device=device)
    T = len(enc.ids)
    is_oss = cfg.model_type == "gpt_oss"
    L = len(model.blocks)
    window = cfg.sliding_window if is_oss else 128  # GPT-2 gets gpt-oss's window as a yardstick
    edges = distance_edges(T, window)
    iv_hooks, fwd_kwargs = [], {}
    if intervention is not None and not intervention.is_noop():
        intervention.validate(cfg, T)
        iv_hooks = intervention.hooks(model, T)
        fwd_kwargs = intervention.forward_kwargs(T)
    replaced = {name for name, _ in iv_hooks}
    # gpt-oss layers whose pattern no intervention replaces get their pattern reductions from the rotated q/k
    # (pattern_reductions: a block of queries at a time), so the forward keeps its fused attention kernel on the
    # GPU and no [H, T, T] map is ever whole; the others reduce the pattern hook's full map.
    from_qk = [is_oss and f"blocks.{i}.attn.hook_pattern" not in replaced for i in range(L)]

    red: dict[str, list] = {k: [None] * L for k in ("first", "dist", "sink", "router", "idx", "w", "mlp", "norm")}
    qk: dict[int, list] = {i: [None, None] for i in range(L)}
    keep_qk = _qk_bytes(cfg, T) <= QK_KEEP_BYTES

    def layer_of(hook) -> int:
        return int(hook.name.split(".")[1])

    def on_pattern(p, hook):  # [H, T, T] -> small reductions, on the device
        i = layer_of(hook)
        red["first"][i], red["dist"][i] = pattern_map_reductions(p, edges_dev)

    def grab(key, fn=lambda x: x):
        @observer
        def hook_fn(x, hook):
            red[key][layer_of(hook)] = fn(x)
        return hook_fn

    def keep(slot):
        def hook_fn(x, hook):
            qk[layer_of(hook)][slot] = x
        return hook_fn

    q_now: dict[int, torch.Tensor] = {}
    edges_dev = torch.as_tensor(edges, device=device)  # copied once, not once a layer

    def on_k_rot(k, hook):  # fires right after the same layer's hook_q_rot
        i = layer_of(hook)
        attn = model.blocks[i].attn
        layer_window = None if attn.window is None else fwd_kwargs.get("window") or attn.window
        red["first"][i], red["dist"][i] = pattern_reductions(q_now.pop(i), k, attn.sinks, layer_window, edges_dev,
                                                             use_kernel=attn.use_kernels)

    def rms(x):  # [T, d] -> [T], root mean square in fp32 (one reduction kernel)
        return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32) * x.shape[-1] ** -0.5
    hooks = []
    for i in range(L):
        if from_qk[i]:
            hooks += [(f"blocks.{i}.attn.hook_q_rot", lambda x, h: q_now.__setitem__(layer_of(h), x)),
                      (f"blocks.{i}.attn.hook_k_rot", on_k_rot)]
        else:
            hooks.append((f"blocks.{i}.attn.hook_pattern", on_pattern))
    hooks += [(f"blocks.{i}.hook_resid_post", grab("norm", rms)) for i in range(L)]
    emb: dict[str, torch.Tensor] = {}
    hooks.append(("hook_embed", lambda x, h: emb.__setitem__("tok", x)))
    if is_oss:
        hooks += [(f"blocks.{i}.attn.hook_sink_prob", grab("sink")) for i in range(L)]
        hooks += [(f"blocks.{i}.mlp.hook_router_logits", grab("router")) for i in range(L)]
        hooks += [(f"blocks.{i}.mlp.hook_expert_idx", grab("idx")) for i in range(L)]
        hooks += [(f"blocks.{i}.mlp.hook_expert_weight", grab("w")) for i in range(L)]
        if keep_qk:
            hooks += [(f"blocks.{i}.attn.hook_q_rot", keep(0)) for i in range(L)]
            hooks += [(f"blocks.{i}.attn.hook_k_rot", keep(1)) for i in range(L)]
    else:
        hooks += [(f"blocks.{i}.mlp.hook_pre", grab("mlp", lambda x: (x > 0).float().mean(-1))) for i in range(L)]
        hooks.append(("hook_pos_embed", lambda x, h: emb.__setitem__("pos", x)))
        if keep_qk:
            hooks += [(f"blocks.{i}.attn.hook_q", keep(0)) for i in range(L)]
            hooks += [(f"blocks.{i}.attn.hook_k", keep(1)) for i in range(L)]

    hooks = iv_hooks + hooks  # replacements first: the reductions see their result
    start = time.perf_counter()
    with model.hooks(hooks):
        logits = model(ids, **fwd_kwargs)  # [T, V]
    top_p, top_i = top_predictions(logits)  # [T, 5] each
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    def stacked(key):
        t = torch.stack(red[key])
        return t.float() if t.is_floating_point() else t  # numpy has no bf16

    keys = ["norm", "first", "dist"] + (["sink", "router", "idx", "w"] if is_oss else ["mlp"])
    got = to_host({"top_i": top_i, "top_p": top_p, "emb_norm": rms(emb["tok"])[None],
                   **{k: stacked(k) for k in keys},
                   **({"sinks": torch.stack([b.attn.sinks for b in model.blocks]).float()} if is_oss else {})})

    def host(key, dtype=np.float32):
        return got[key].astype(dtype, copy=False)  # (each array is to_host's own copy)

    top_ids = got["top_i"]
    tr = Trace(
        model=getattr(model, "source", "?"), arch=cfg.model_type, config=cfg, text=enc.text, chat=chat,
        ids=np.asarray(enc.ids, dtype=np.int64), tokens=list(enc.tokens), offsets=list(enc.offsets),
        top_ids=top_ids, top_probs=got["top_p"],
        top_tokens=[[model.tokenizer.decode([int(t)]) for t in row] for row in top_ids],
        resid_norm=np.concatenate([host("emb_norm"), host("norm")]),
        first_token_mass=host("first"), distance_edges=edges, distance_mass=host("dist"), seconds=seconds,
        _qk={i: tuple(v) for i, v in qk.items()} if keep_qk else None, _model=model, intervention=intervention,
        path=path_taken(model),
    )
    if is_oss:
        tr.sink_prob = host("sink")
        if intervention is not None:  # a removed sink takes no probability: the pattern was renormalised
            for layer, head in intervention.sinkless(cfg):
                tr.sink_prob[layer, head] = 0.0
        tr.sinks = host("sinks")
        tr.router_logits = host("router")
        tr.expert_idx = host("idx", np.int16)
        tr.expert_weight = host("w")
    else:
        tr.mlp_active = host("mlp")
        pos = emb["pos"][:POS_SIM_MAX].float()
        pos = pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        tr.pos_similarity = (pos @ pos.T).cpu().numpy()
    return tr


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """{name: tensor} -> {name: numpy array}. From a GPU, every copy goes into pinned host memory at once and is
    waited for once: a plain .cpu() copies each tensor through a staging buffer and waits for it (on an H200's
    host, the 1024-token Trace's ten copies took ~3 ms so). The arrays then are copies of their own (the pinned
    blocks go back to torch's cache)."""
    cuda = [t for t in tensors.values() if t.is_cuda]
    if not cuda:
        return {k: t.detach().numpy().copy() for k, t in tensors.items()}
    staged = {}
    for k, t in tensors.items():
        if t.is_cuda:
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            h.copy_(t.detach(), non_blocking=True)
            staged[k] = h
        else:
            staged[k] = t.detach()
    for dev in {t.device for t in cuda}:
        torch.cuda.current_stream(dev).synchronize()
    return {k: h.numpy().copy() for k, h in staged.items()}


PATTERN_CHUNK_BYTES = 128 << 20  # fp32 scores of one block of queries in pattern_reductions


def pattern_reductions(q: torch.Tensor, k: torch.Tensor, sinks: torch.Tensor, window: int | None,
                       edges, use_kernel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The Trace's pattern statistics of one gpt-oss layer from its rotated q [T, H, D] and k [T, K, D]:
    first_token_mass [H] (mean over queries 1.. of the mass on token 0) and distance_mass [H, B] (mean over
    queries of the mass in each distance bucket edges[b] <= q - k < edges[b+1]; `edges` as numbers or a tensor,
    best already on q's device).

    The pattern comes from attention_with_sinks, the model's own function, one block of queries at a time (only
    the keys the block can see: the window's for sliding layers), so it is never whole in memory: bucket masses
    are differences of each row's cumulative sum at the bucket edges. On CUDA (with `use_kernel`) the Triton
    kernel kernels.attention.pattern_stats_fused computes the same sums straight from q and k (tested against
    this code in tests/test_kernels_gpu.py).
    """
    if use_kernel and _stats_kernel_ok(q):
        from gptoss_viz.runtime.kernels.attention import pattern_stats_fused

        return pattern_stats_fused(q, k, sinks, window, edges)
    T, H = q.shape[0], q.shape[1]
    first = torch.zeros(H, device=q.device)
    dist = torch.zeros(H, len(edges) - 1, device=q.device)
    e = torch.as_tensor(edges, device=q.device)  # [B+1]
    chunk = max(16, PATTERN_CHUNK_BYTES // (4 * H * T))
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        lo = 0 if window is None else max(0, a - window + 1)  # keys before lo are outside every row's window
        p, _ = attention_with_sinks(q[a:b], k[lo:b], sinks, window)  # [H, n, b - lo]: queries a..b-1
        _add_block_masses(p, a, lo, e, first, dist)
    return first / max(T - 1, 1), dist / T


def pattern_map_reductions(p: torch.Tensor, edges: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The same statistics as pattern_reductions from a whole pattern p [H, T, T] (a hook_pattern: GPT-2's, or
    a gpt-oss layer whose pattern an intervention replaced), a block of queries at a time."""
    H, T = p.shape[0], p.shape[1]
    first = torch.zeros(H, device=p.device)
    dist = torch.zeros(H, len(edges) - 1, device=p.device)
    e = torch.as_tensor(edges, device=p.device)
    chunk = max(16, PATTERN_CHUNK_BYTES // (4 * H * T))
    for a in range(0, T, chunk):
        _add_block_masses(p[:, a:a + chunk], a, 0, e, first, dist)
    return first / max(T - 1, 1), dist / T


def _add_block_masses(p: torch.Tensor, a: int, lo: int, e: torch.Tensor, first: torch.Tensor,
                      dist: torch.Tensor) -> None:
    """Add the masses of a pattern block p [H, n, m] (queries a..a+n-1, keys lo..lo+m-1) into first [H] (mass on
    key 0, queries >= 1) and dist [H, B] (mass per distance bucket), in place. Bucket masses are differences of
    each row's cumulative sum at the bucket edges: no scatter, no atomics."""
    n = p.shape[1]
    if lo == 0 and a + n > 1:
        first += p[:, max(0, 1 - a):, 0].float().sum(-1)  # queries at positions >= 1
    cum = torch.nn.functional.pad(p.float().cumsum(-1), (1, 0))  # [H, n, m+1]: cum[x] = mass on keys < lo+x
    pos = torch.arange(a, a + n, device=p.device)[:, None]  # [n, 1]
    # bucket j holds keys pos - e[j+1] < key <= pos - e[j]; mass on keys <= x is cum[x - lo + 1]
    top = cum.shape[-1] - 1
    upper = (pos - e[None, :-1] - lo + 1).clamp(0, top).expand(p.shape[0], -1, -1)  # [H, n, B]
    lower = (pos - e[None, 1:] - lo + 1).clamp(0, top).expand(p.shape[0], -1, -1)
    dist += (cum.gather(-1, upper) - cum.gather(-1, lower)).sum(1)


def _stats_kernel_ok(q: torch.Tensor) -> bool:
    D = q.shape[-1]
    if not (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and D >= 16 and not D & (D - 1)):
        return False
    from gptoss_viz.runtime.kernels import available

    return available(q.device)


def top_predictions(logits: torch.Tensor, k: int = TOP_K_PREDICTIONS, rows: int = 256):
    """Top-k next tokens and their probabilities, [T, k] each. The top k of the logits are the top k of the
    softmax (it is monotonic in each row), so topk runs on the logits as they are; each row's logsumexp comes in
    fp32 a few rows at a time: a whole fp32 copy of gpt-oss logits is 1.6 GB at 2048 tokens (T x 201088 x 4).
    On CUDA a Triton kernel (kernels/fused.py: top_predictions_fused) computes both in one read of the logits."""
    from gptoss_viz.runtime.kernels import available

    if logits.is_cuda and available(logits.device):
        from gptoss_viz.runtime.kernels.fused import top_predictions_fused

        return top_predictions_fused(logits, k)
    return top_predictions_torch(logits, k, rows)


def top_predictions_torch(logits: torch.Tensor, k: int = TOP_K_PREDICTIONS, rows: int = 256):
    """top_predictions in plain torch (every device): topk on the logits, logsumexp in fp32 `rows` rows at a time."""
    top, ids = logits.topk(k, dim=-1)
    lse = torch.cat([chunk.float().logsumexp(-1) for chunk in logits.split(rows)])
    return (top.float() - lse[:, None]).exp(), ids


def path_taken(model) -> str:
    """Which implementation ran the last forward: "reference", "triton", or per part (the gpt-oss model records
    it in `last_path`; hooks that need full tensors, like the pattern reductions above, keep the reference)."""
    last = getattr(model, "last_path", None)
    if not isinstance(last, dict):
        return "reference"
    if len(set(last.values())) == 1:
        return next(iter(last.values()))
    return ", ".join(f"{part}: {p}" for part, p in last.items())


def _qk_bytes(cfg, T: int) -> int:
    if cfg.model_type == "gpt_oss":
        per_layer = T * (cfg.num_attention_heads + cfg.num_key_value_heads) * cfg.head_dim
        return cfg.num_hidden_layers * per_layer * 4
    return cfg.n_layer * T * 2 * cfg.n_embd * 4


def host_bytes(cfg, T: int) -> int:
    """The host arrays a Trace of T tokens holds for this architecture (what `Trace.nbytes_host` will report),
    computed from the config alone, e.g. to check gpt-oss-20b at 4096 tokens without running it."""
    is_oss = cfg.model_type == "gpt_oss"
    L = cfg.num_hidden_layers if is_oss else cfg.n_layer
    H = cfg.num_attention_heads if is_oss else cfg.n_head
    B = len(distance_edges(T, cfg.sliding_window if is_oss else 128)) - 1
    n = T * 8 + T * TOP_K_PREDICTIONS * (8 + 4)  # ids; top ids (int64) and top probs (float32)
    n += (L + 1) * T * 4 + L * H * 4 + (B + 1) * 8 + L * H * B * 4  # resid_norm, first_token, edges, distance
    if is_oss:
        E, k = cfg.num_local_experts, cfg.num_experts_per_tok
        n += L * H * T * 4 + L * H * 4 + L * T * E * 4 + L * T * k * (2 + 4)
    else:
        P = min(T, POS_SIM_MAX)
        n += L * T * 4 + P * P * 4
    return n
