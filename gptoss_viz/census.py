"""Routing census: many prompts -> expert statistics per label, for gpt-oss (and GPT-2's counterparts).

Input files: .txt (one prompt per line), .jsonl (`text` or `prompt`, optional `label`), .csv (a `text` or
`prompt` column, optional `label`). Bad lines are skipped and counted, never dropped silently; files over the
limits or not text are refused with a message saying why.

Prompts run in batches of similar length, right-padded: attention is causal, so a real token never sees the
padding after it, and padded positions are left out of every statistic. Each statistic is a sum over tokens (or
queries), so results of batches, and of ranks under torchrun, simply add up. Batches are formed the same way
whatever the number of ranks and their results are summed in batch order, so one process and N ranks give the
same numbers (with the same number of threads per process).

CLI:  python -m gptoss_viz census PROMPTS --model gpt-oss-nano [--gpt2 gpt2-nano] --out stats.json|stats.csv
      torchrun --nproc_per_node 2 -m gptoss_viz census ...   (data-parallel: each rank takes every N-th batch)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptoss_viz.errors import GptOssVizError
from gptoss_viz.runtime.hooks import observer

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 5 << 20  # 5 MB
MAX_PROMPTS = 5000
MAX_PROMPT_CHARS = 20_000  # a longer line is skipped and counted
TOP_TOKENS = 10  # tokens listed per expert per layer
BATCH_TOKENS = 8192  # padded tokens per forward pass
ALL = "(all)"  # the label that aggregates every prompt


class CensusInputError(GptOssVizError):
    """The prompts file cannot be used (type, size, encoding, columns)."""


@dataclass
class Prompt:
    text: str
    label: str
    line: int  # 1-based line (or CSV row) in the file


@dataclass
class ParseReport:
    prompts: list[Prompt]
    skipped: Counter = field(default_factory=Counter)  # reason -> lines skipped

    def summary(self) -> str:
        s = f"{len(self.prompts)} prompts"
        if self.skipped:
            s += "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return s


def parse_prompts(data: bytes, filename: str, max_bytes: int = MAX_FILE_BYTES,
                  max_prompts: int = MAX_PROMPTS) -> ParseReport:
    """Read a prompts file's bytes. Refuses (CensusInputError) what cannot be a prompts file at all."""
    name = Path(str(filename)).name
    ext = Path(name).suffix.lower()
    if ext not in (".txt", ".jsonl", ".csv"):
        raise CensusInputError(f"{name!r}: only .txt, .jsonl and .csv prompt files are accepted")
    if len(data) > max_bytes:
        raise CensusInputError(f"{name!r} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    if b"\x00" in data:
        raise CensusInputError(f"{name!r} is a binary file, not text")
    try:
        text = data.decode("utf-8-sig")  # strips a byte-order mark
    except UnicodeDecodeError as e:
        raise CensusInputError(f"{name!r} is not UTF-8 text (byte {e.start})") from None
    report = ParseReport([])
    if ext == ".csv":
        _parse_csv(text, name, report)
    else:
        for i, line in enumerate(text.splitlines(), start=1):  # \n, \r\n and \r alike
            if not line.strip():
                report.skipped["empty lines"] += 1
                continue
            if ext == ".txt":
                _add(report, line, "", i)
            else:
                _parse_json_line(line, i, report)
    if not report.prompts:
        raise CensusInputError(f"{name!r} holds no usable prompt ({report.summary()})")
    if len(report.prompts) > max_prompts:
        raise CensusInputError(f"{name!r} holds {len(report.prompts):,} prompts; the limit is {max_prompts:,}")
    return report


def _add(report: ParseReport, text: str, label, line: int) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        report.skipped[f"prompts over {MAX_PROMPT_CHARS:,} characters"] += 1
    elif not text.strip():
        report.skipped["empty prompts"] += 1
    else:
        report.prompts.append(Prompt(text, "" if label is None else str(label)[:100], line))


def _parse_json_line(line: str, i: int, report: ParseReport) -> None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        report.skipped["lines that are not JSON"] += 1
        return
    text = obj.get("text", obj.get("prompt")) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        report.skipped["JSON lines without a text or prompt string"] += 1
        return
    label = obj.get("label")
    if label is not None and not isinstance(label, (str, int, float, bool)):
        report.skipped["JSON lines whose label is not a plain value"] += 1
        return
    _add(report, text, label, i)


def _parse_csv(text: str, name: str, report: ParseReport) -> None:
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows)
    except (StopIteration, csv.Error):
        raise CensusInputError(f"{name!r} has no CSV header row") from None
    cols = [h.strip().lower() for h in header]
    col = next((cols.index(c) for c in ("text", "prompt") if c in cols), None)
    if col is None:
        raise CensusInputError(f"{name!r} has no 'text' or 'prompt' column (columns: {', '.join(header)[:200]})")
    lab = cols.index("label") if "label" in cols else None
    row_no = 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error:
            report.skipped["malformed CSV rows"] += 1
            row_no += 1
            continue
        row_no += 1
        if not row or not any(c.strip() for c in row):
            report.skipped["empty lines"] += 1
            continue
        if len(row) != len(header):
            report.skipped["CSV rows with the wrong number of columns"] += 1
            continue
        _add(report, row[col], row[lab] if lab is not None else "", row_no)


# ---------------------------------------------------------------------------------------------------------------
# Statistics

@dataclass
class LabelStats:
    """Sums over the tokens of one label's prompts. Everything adds up across batches and ranks."""

    prompts: int = 0
    tokens: int = 0
    # gpt-oss
    expert_count: np.ndarray | None = None  # [L, E] (token, slot) assignments
    entropy_sum: np.ndarray | None = None  # [L] sum of normalised router entropy over tokens
    co: np.ndarray | None = None  # [L, E, E] tokens routed to both experts
    sink_sum: np.ndarray | None = None  # [L, H] sum over query tokens of the sink probability
    expert_tokens: dict = field(default_factory=lambda: defaultdict(Counter))  # (layer, expert) -> token id counts
    # GPT-2
    first_sum: np.ndarray | None = None  # [L, H] sum over queries t >= 1 of attention on token 0
    first_queries: int = 0
    mlp_active_sum: np.ndarray | None = None  # [L] sum over tokens of the share of active MLP neurons

    def add(self, other: "LabelStats") -> None:
        self.prompts += other.prompts
        self.tokens += other.tokens
        self.first_queries += other.first_queries
        for name in ("expert_count", "entropy_sum", "co", "sink_sum", "first_sum", "mlp_active_sum"):
            a, b = getattr(self, name), getattr(other, name)
            if b is not None:
                setattr(self, name, b.copy() if a is None else a + b)
        for key, c in other.expert_tokens.items():
            self.expert_tokens[key].update(c)


def batches(lengths: list[int], batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Prompt indices grouped into batches of similar length (sorted, stable), at most batch_tokens padded."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lengths[i])
        if cur and longest_new * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, longest_new = [], lengths[i]
        cur.append(i)
        longest = longest_new
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def batch_stats(model, ids_list: list[list[int]], labels: list[str]) -> dict[str, LabelStats]:
    """One padded forward pass over a batch of prompts -> statistics per label (pad positions excluded)."""
    cfg = model.config
    device = next(model.parameters()).device
    B, T = len(ids_list), max(len(x) for x in ids_list)
    ids = torch.zeros(B, T, dtype=torch.long)  # padded after each prompt: causal, so no prompt sees its padding
    for b, x in enumerate(ids_list):
        ids[b, : len(x)] = torch.tensor(x)
    ids = ids.to(device)
    L = len(model.blocks)
    is_oss = cfg.model_type == "gpt_oss"
    cap: dict[str, list] = defaultdict(lambda: [None] * L)

    def grab(key, fn=lambda x: x):
        @observer
        def hook(x, h):
            cap[key][int(h.name.split(".")[1])] = fn(x)
        return hook

    if is_oss:
        E = cfg.num_local_experts
        hooks = [(f"blocks.{i}.mlp.hook_router_logits", grab("logits", lambda x: x.float())) for i in range(L)]
        hooks += [(f"blocks.{i}.mlp.hook_expert_idx", grab("idx")) for i in range(L)]
        hooks += [(f"blocks.{i}.attn.hook_sink_prob", grab("sink", lambda x: x.float())) for i in range(L)]
    else:
        hooks = [(f"blocks.{i}.attn.hook_pattern", grab("first", lambda p: p[..., :, 0].float())) for i in range(L)]
        hooks += [(f"blocks.{i}.mlp.hook_pre", grab("mlp", lambda x: (x > 0).float().mean(-1))) for i in range(L)]
    with model.hooks(hooks):
        model(ids)
    out: dict[str, LabelStats] = {}
    for b, label in enumerate(labels):
        n = len(ids_list[b])
        s = out.setdefault(label, LabelStats())
        part = LabelStats(prompts=1, tokens=n)
        if is_oss:
            idx = torch.stack([cap["idx"][i][b, :n] for i in range(L)]).cpu()  # [L, n, k]
            onehot = torch.zeros(L, n, E, dtype=torch.int64).scatter_(-1, idx.long(), 1)  # [L, n, E]
            part.expert_count = onehot.sum(1).numpy()
            part.co = torch.einsum("lte,ltf->lef", onehot, onehot).numpy()
            logits = torch.stack([cap["logits"][i][b, :n] for i in range(L)]).double()  # [L, n, E]
            p = logits.softmax(-1)
            part.entropy_sum = (-(p * p.clamp_min(1e-300).log()).sum(-1) / math.log(E)).sum(-1).cpu().numpy()
            part.sink_sum = torch.stack([cap["sink"][i][b, :, :n] for i in range(L)]).double().sum(-1).cpu().numpy()
            # (layer, expert, token id) triples counted at once, then filed per (layer, expert)
            tok = np.asarray(ids_list[b], dtype=np.int64)
            idx_np = idx.numpy().astype(np.int64)  # [L, n, k]
            lay = np.broadcast_to(np.arange(L)[:, None, None], idx_np.shape)
            tt = np.broadcast_to(tok[None, :, None], idx_np.shape)
            keys, counts = np.unique(np.stack([lay.ravel(), idx_np.ravel(), tt.ravel()]), axis=1, return_counts=True)
            for (layer, e, t), c in zip(keys.T.tolist(), counts.tolist()):
                part.expert_tokens[(layer, e)][t] += c
        else:
            part.first_queries = n - 1
            part.first_sum = torch.stack([cap["first"][i][b, :, 1:n] for i in range(L)]).double().sum(-1).cpu().numpy()
            part.mlp_active_sum = torch.stack([cap["mlp"][i][b, :n] for i in range(L)]).double().sum(-1).cpu().numpy()
        s.add(part)
    return out


@dataclass
class CensusResult:
    model: str
    arch: str
    stats: dict[str, LabelStats]  # label -> sums (ALL included)
    skipped: dict[str, int]  # reason -> prompts left out
    tokenizer: object = field(default=None, repr=False, compare=False)  # to show top tokens as text


@dataclass
class Plan:
    """The prompts as token ids, grouped into batches: the same plan whatever the number of ranks."""

    encoded: list[list[int]]
    labels: list[str]
    batches: list[list[int]]
    skipped: dict[str, int]

    def run(self, model, j: int) -> dict[str, LabelStats]:
        group = self.batches[j]
        return batch_stats(model, [self.encoded[i] for i in group], [self.labels[i] for i in group])


def plan(model, prompts: list[Prompt], batch_tokens: int = BATCH_TOKENS, max_tokens: int | None = None) -> Plan:
    cfg = model.config
    limit = min(cfg.max_position_embeddings, max_tokens or cfg.max_position_embeddings)
    encoded, labels, refused = [], [], 0
    for p in prompts:
        ids = model.tokenizer.encode(p.text)
        if not ids or len(ids) > limit:
            refused += 1
            continue
        encoded.append(ids)
        labels.append(p.label)
    skipped = {f"prompts longer than {limit} tokens (or empty after tokenizing)": refused} if refused else {}
    return Plan(encoded, labels, batches([len(x) for x in encoded], batch_tokens), skipped)


def run_census(model, prompts: list[Prompt], batch_tokens: int = BATCH_TOKENS, max_tokens: int | None = None,
               progress=None, cancel=None) -> CensusResult:
    """Statistics of `model` over the prompts in one process. `progress(done, total)` is called after each
    batch; `cancel()` returning True stops early, and the result then says how many prompts were not run."""
    pl = plan(model, prompts, batch_tokens, max_tokens)
    per_batch = []
    for j in range(len(pl.batches)):
        if cancel is not None and cancel():
            pl.skipped["prompts not run: cancelled"] = sum(len(b) for b in pl.batches[j:])
            break
        per_batch.append((j, pl.run(model, j)))
        if progress is not None:
            progress(j + 1, len(pl.batches))
    return _result(model, per_batch, pl.skipped)


def run_distributed(model, prompts: list[Prompt], batch_tokens: int = BATCH_TOKENS,
                    max_tokens: int | None = None) -> CensusResult | None:
    """Under torchrun: rank r runs batches r, r + N, ...; rank 0 gathers the per-batch results and sums them in
    batch order, as one process would. Returns the result on rank 0, None on the other ranks."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    pl = plan(model, prompts, batch_tokens, max_tokens)
    mine = [(j, pl.run(model, j)) for j in range(rank, len(pl.batches), world)]
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    return _result(model, [x for part in gathered for x in part], pl.skipped)


def _result(model, per_batch, skipped) -> CensusResult:
    """Add the batch results in batch order (the same order for one process and for N ranks)."""
    total: dict[str, LabelStats] = {}
    for _, stats in sorted(per_batch, key=lambda x: x[0]):
        for label, s in stats.items():
            total.setdefault(label, LabelStats()).add(s)
            total.setdefault(ALL, LabelStats()).add(s)
    return CensusResult(getattr(model, "source", "?"), model.config.model_type, total, skipped, model.tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Reports

def to_json(results: list[CensusResult], report: ParseReport | None = None) -> dict:
    """All statistics as plain JSON (means and shares alongside the raw counts)."""
    out = {"models": {}, "input": {"prompts": len(report.prompts) if report else None,
                                   "skipped": dict(report.skipped) if report else {}}}
    for r in results:
        labels = {}
        tok = _tokenizer_of(r)
        for label, s in sorted(r.stats.items()):
            d = {"prompts": s.prompts, "tokens": s.tokens}
            if s.expert_count is not None:
                d["expert_count"] = s.expert_count.tolist()
                d["expert_share"] = (s.expert_count / s.expert_count.sum(1, keepdims=True)).round(6).tolist()
                d["router_entropy"] = (s.entropy_sum / max(s.tokens, 1)).round(6).tolist()
                d["sink_mass"] = (s.sink_sum / max(s.tokens, 1)).round(6).tolist()
                d["coactivation"] = s.co.tolist()
                d["top_tokens"] = {f"{layer}:{e}": [[tok(t), n] for t, n in c.most_common(TOP_TOKENS)]
                                   for (layer, e), c in sorted(s.expert_tokens.items())}
            if s.first_sum is not None:
                d["first_token_mass"] = (s.first_sum / max(s.first_queries, 1)).round(6).tolist()
                d["mlp_active"] = (s.mlp_active_sum / max(s.tokens, 1)).round(6).tolist()
            labels[label] = d
        out["models"][r.model] = {"arch": r.arch, "skipped": r.skipped, "labels": labels}
    return out


def to_csv(results: list[CensusResult]) -> str:
    """One row per (model, label, layer, expert) for gpt-oss, per (model, label, layer, head) for GPT-2."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "label", "layer", "expert_or_head", "count", "share", "router_entropy", "sink_or_first_mass",
                "top_tokens"])
    for r in results:
        tok = _tokenizer_of(r)
        for label, s in sorted(r.stats.items()):
            if s.expert_count is not None:
                L, E = s.expert_count.shape
                for layer in range(L):
                    row_total = s.expert_count[layer].sum()
                    ent = s.entropy_sum[layer] / max(s.tokens, 1)
                    for e in range(E):
                        top = " | ".join(f"{tok(t)}:{n}" for t, n in
                                         s.expert_tokens.get((layer, e), Counter()).most_common(TOP_TOKENS))
                        w.writerow([r.model, label, layer, e, int(s.expert_count[layer, e]),
                                    f"{s.expert_count[layer, e] / max(row_total, 1):.6f}", f"{ent:.6f}", "", top])
                    for h in range(s.sink_sum.shape[1]):
                        w.writerow([r.model, label, layer, f"head {h}", "", "", "",
                                    f"{s.sink_sum[layer, h] / max(s.tokens, 1):.6f}", ""])
            if s.first_sum is not None:
                for layer in range(s.first_sum.shape[0]):
                    for h in range(s.first_sum.shape[1]):
                        w.writerow([r.model, label, layer, f"head {h}", "", "", "",
                                    f"{s.first_sum[layer, h] / max(s.first_queries, 1):.6f}", ""])
    return buf.getvalue()


def _tokenizer_of(r: CensusResult):
    if r.tokenizer is None:
        return lambda i: str(i)
    return lambda i: r.tokenizer.decode([int(i)])


# ---------------------------------------------------------------------------------------------------------------
# CLI, single process or torchrun

def main(argv=None) -> int:
    import argparse

    from gptoss_viz import load_model

    ap = argparse.ArgumentParser(prog="python -m gptoss_viz census", description="routing statistics for many prompts")
    ap.add_argument("prompts", type=Path, help=".txt, .jsonl or .csv prompts file")
    ap.add_argument("--model", default="gpt-oss-nano", help="gpt-oss model (bundled name, Hub id or directory)")
    ap.add_argument("--gpt2", default=None, help="also a GPT-2 model, for its counterpart statistics")
    ap.add_argument("--out", type=Path, required=True, help="output file: .json or .csv")
    ap.add_argument("--device", default=None, help="cpu or cuda (under torchrun: cuda:<local rank>)")
    ap.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS)
    ap.add_argument("--max-tokens", type=int, default=None, help="skip prompts longer than this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.out.suffix.lower() not in (".json", ".csv"):
        ap.error("--out must end in .json or .csv")
    try:
        report = parse_prompts(args.prompts.read_bytes(), args.prompts.name)
    except (OSError, CensusInputError) as e:
        ap.error(str(e))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        use_cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local)  # NCCL's collectives run on the current device: one GPU per rank
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = f"cuda:{local}" if use_cuda else "cpu"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else None
    results = []
    for name in [args.model] + ([args.gpt2] if args.gpt2 else []):
        model = load_model(name, device=device, dtype=dtype)
        if distributed:
            r = run_distributed(model, report.prompts, args.batch_tokens, args.max_tokens)
        else:
            r = run_census(model, report.prompts, args.batch_tokens, args.max_tokens,
                           progress=lambda d, n: log.info("%s: batch %d/%d", name, d, n))
        if r is not None:
            results.append(r)
    if results:
        text = (json.dumps(to_json(results, report), indent=1) if args.out.suffix.lower() == ".json"
                else to_csv(results))
        args.out.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
        log.info("wrote %s (%s)", args.out, report.summary())
    if distributed:
        import torch.distributed as dist

        # Every rank waits here until rank 0 has written the file: a rank that tore its process group down while
        # another still used it aborted now and then (gloo: "terminate called without an active exception").
        dist.barrier(device_ids=[local] if use_cuda else None)  # NCCL: this rank's GPU, as set above
        dist.destroy_process_group()
    return 0
