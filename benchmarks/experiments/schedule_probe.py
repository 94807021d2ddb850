"""GPU time of three ways to group the MoE's assignments by expert in the single-program schedule kernel
(kernels/fused.py): atomics on per-expert cursors (order within a group as the atomics serve it), and two stable
counting sorts by prefix sums over a one-hot matrix, scanned down its rows [CHUNK, EP] or along them [EP, CHUNK].
Only the grouping part differs; each is checked against the reference's stable argsort. Development probe (issue 6):
`python schedule_probe.py OUT.json`."""

import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptoss_viz.runtime.kernels.schedule import moe_schedule  # noqa: E402


@triton.jit
def _group_kernel(idx_ptr, order_ptr, token_ptr, cursor_ptr, A, E, TOP_K: tl.constexpr, EP: tl.constexpr,
                  CHUNK: tl.constexpr, WAY: tl.constexpr):
    re = tl.arange(0, EP)
    counts = tl.zeros([EP], dtype=tl.int32)
    for a0 in range(0, A, CHUNK):
        ra = a0 + tl.arange(0, CHUNK)
        v = tl.load(idx_ptr + ra, mask=ra < A, other=EP - 1).to(tl.int32)
        counts += tl.histogram(v, EP)
    counts = tl.where(re < E, counts, 0)
    ends = tl.cumsum(counts, 0)
    starts = ends - counts
    if WAY == 0:  # atomics
        tl.store(cursor_ptr + re, starts)
        tl.debug_barrier()
        for a0 in range(0, A, CHUNK):
            ra = a0 + tl.arange(0, CHUNK)
            m = ra < A
            v = tl.load(idx_ptr + ra, mask=m, other=0).to(tl.int32)
            row = tl.atomic_add(cursor_ptr + v, 1, mask=m)
            tl.store(order_ptr + row, ra, mask=m)
            tl.store(token_ptr + row, ra // TOP_K, mask=m)
    elif WAY == 1:  # stable, scan down the rows of [CHUNK, EP]
        base = starts
        for a0 in range(0, A, CHUNK):
            ra = a0 + tl.arange(0, CHUNK)
            m = ra < A
            v = tl.load(idx_ptr + ra, mask=m, other=0).to(tl.int32)
            hit = ((v[:, None] == re[None, :]) & m[:, None]).to(tl.int32)
            rank = tl.cumsum(hit, 0)
            row = tl.sum(hit * (base[None, :] + rank - 1), 1)
            tl.store(order_ptr + row, ra, mask=m)
            tl.store(token_ptr + row, ra // TOP_K, mask=m)
            base += tl.sum(hit, 0)
    else:  # stable, scan along the rows of [EP, CHUNK]
        base = starts
        for a0 in range(0, A, CHUNK):
            ra = a0 + tl.arange(0, CHUNK)
            m = ra < A
            v = tl.load(idx_ptr + ra, mask=m, other=0).to(tl.int32)
            hit = ((re[:, None] == v[None, :]) & m[None, :]).to(tl.int32)
            rank = tl.cumsum(hit, 1)
            row = tl.sum(hit * (base[:, None] + rank - 1), 0)
            tl.store(order_ptr + row, ra, mask=m)
            tl.store(token_ptr + row, ra // TOP_K, mask=m)
            base += tl.sum(hit, 1)


def run(idx, E, way, chunk, warps, out=None):
    flat = idx.reshape(-1)
    A = flat.numel()
    EP = triton.next_power_of_2(E + 1)
    if out is None:
        out = (torch.empty(A, device="cuda", dtype=torch.int32), torch.empty(A, device="cuda", dtype=torch.int32),
               torch.empty(EP, device="cuda", dtype=torch.int32))
    order, token, cursor = out
    _group_kernel[(1,)](flat, order, token, cursor, A, E, TOP_K=idx.shape[-1], EP=EP, CHUNK=chunk, WAY=way,
                        num_warps=warps)
    return order, token


def gpu_us(fn, reps=20):
    """GPU time a call: `reps` calls captured in one CUDA graph and replayed (no host time in it)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(5):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / (5 * reps)


def main() -> None:
    R = {"gpu": torch.cuda.get_device_name(), "rows": []}
    for E, N in ((32, 128), (32, 1024), (32, 2048), (32, 4096), (128, 1024)):
        idx = torch.randn(N, E, device="cuda").topk(4, -1).indices
        ref = moe_schedule(idx, E, 128)
        flat = idx.reshape(-1)
        EP = triton.next_power_of_2(E + 1)
        for way, chunk, warps in ((0, 1024, 16), (1, max(16, 32768 // EP), 16), (2, max(16, 32768 // EP), 16),
                                  (2, max(16, 8192 // EP), 4), (2, max(16, 16384 // EP), 8)):
            A = flat.numel()
            out = (torch.empty(A, device="cuda", dtype=torch.int32), torch.empty(A, device="cuda", dtype=torch.int32),
                   torch.empty(EP, device="cuda", dtype=torch.int32))
            order, token = run(idx, E, way, chunk, warps, out)
            ok = (torch.equal(order.long(), ref.order) if way else torch.equal(flat[order.long()], flat[ref.order]))
            ok = ok and torch.equal(token.long(), order.long() // 4)
            row = {"E": E, "tokens": N, "way": ["atomics", "stable rows", "stable cols"][way], "chunk": chunk,
                   "warps": warps, "us": gpu_us(lambda: run(idx, E, way, chunk, warps, out)), "correct": ok}
            print(row, flush=True)
            R["rows"].append(row)
    Path(sys.argv[1]).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
