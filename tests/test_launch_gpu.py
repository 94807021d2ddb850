"""kernels/launch.py's Launcher against the Triton JIT it bypasses, on the GPU (skipped without CUDA).

Every GPU test runs with `Launcher.check` on (conftest.py): each launch that reuses a compiled kernel also asks
the JIT which kernel it would have run and fails on a difference. These tests pin the rest: a reused launch does
not go through the JIT, computes what the JIT's launch computes, and each argument property Triton compiles in
(a pointer's 16-byte alignment, an int equal to 1, an int's divisibility by 16 and its width, a constexpr's value)
gives a launch of its own compiled kernel.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def verified_triton():
    from gptoss_viz.runtime.kernels import launch

    if not launch.DIRECT:
        pytest.skip(f"Triton {launch.triton.__version__}: launches go through the JIT (VERIFIED_TRITON: "
                    f"{launch.VERIFIED_TRITON})")


def rms_args(x, w, out, n):
    """_rms_norm_kernel's arguments for rows of x [*, >= n] (its first n columns), no residual."""
    return (x, x, w, out, x, n, 1e-5, x.stride(0), x.stride(0), out.stride(0), x.stride(0))


@pytest.fixture
def rms():
    from gptoss_viz.runtime.kernels.fused import _rms_norm_kernel
    from gptoss_viz.runtime.kernels.launch import Launcher

    return Launcher(_rms_norm_kernel)


def test_a_reused_launch_skips_the_jit_and_equals_it(rms, monkeypatch):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 320, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(320, device="cuda", dtype=torch.bfloat16, generator=g)
    want = torch.empty_like(x)
    rms.fn[(64,)](*rms_args(x, w, want, 320), HAS_RES=False, BLOCK=512, num_warps=4)
    first = torch.empty_like(x)
    rms[(64,)](*rms_args(x, w, first, 320), HAS_RES=False, BLOCK=512, num_warps=4)  # through the JIT, cached
    assert len(rms._cache) == 1

    def no_jit(*a, **k):
        raise AssertionError("a reused launch went through the JIT")

    monkeypatch.setattr(rms.fn, "run", no_jit)
    again = torch.full_like(x, float("nan"))
    y = torch.randn(64, 320, device="cuda", dtype=torch.bfloat16, generator=g)  # other data, same kind
    rms[(64,)](*rms_args(x, w, again, 320), HAS_RES=False, BLOCK=512, num_warps=4)
    other = torch.empty_like(y)
    rms[(64,)](*rms_args(y, w, other, 320), HAS_RES=False, BLOCK=512, num_warps=4)
    torch.cuda.synchronize()
    assert torch.equal(first, want) and torch.equal(again, want)
    monkeypatch.undo()
    ref = torch.empty_like(y)
    rms.fn[(64,)](*rms_args(y, w, ref, 320), HAS_RES=False, BLOCK=512, num_warps=4)
    assert torch.equal(other, ref), "the reused launch read the first call's tensors"


def test_each_property_triton_compiles_in_gets_its_own_kernel(rms):
    g = torch.Generator(device="cuda").manual_seed(1)
    base = torch.randn(40, 272, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(272, device="cuda", dtype=torch.bfloat16, generator=g)
    cases = {
        "aligned, n % 16 == 0": (base[:, :256], 256),
        "unaligned pointer": (base[:, 1:257], 256),  # 2 bytes past a 16-byte boundary
        "n not a multiple of 16": (base[:, :255], 255),
        "n == 1": (base[:, :1], 1),
    }
    for name, (x, n) in cases.items():
        for reuse in (False, True):
            got = torch.full((40, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            rms[(40,)](*rms_args(x, w, got, n), HAS_RES=False, BLOCK=256, num_warps=4)
            want = torch.empty_like(got)
            rms.fn[(40,)](*rms_args(x, w, want, n), HAS_RES=False, BLOCK=256, num_warps=4)
            assert torch.equal(got, want), f"{name} (reused: {reuse}): the launcher's output differs from the JIT's"
    keys = {k[1] for k in rms._cache}
    assert len(rms._cache) == len(cases) == len(keys), f"{len(rms._cache)} cached kernels for {len(cases)} cases"
    jit_keys = {v[2] for v in rms._cache.values()}
    assert len(jit_keys) == len(cases), "two cases share the JIT's compiled kernel: the keys are finer than Triton's"
    # a constexpr's value is part of the key too
    x = base[:, :256]
    out = torch.empty(40, 256, device="cuda", dtype=torch.bfloat16)
    rms[(40,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=512, num_warps=4)
    assert len(rms._cache) == len(cases) + 1


def test_the_check_catches_a_kernel_the_jit_would_not_run(rms):
    from gptoss_viz.runtime.kernels.launch import Launcher

    assert Launcher.check, "conftest.py should turn the check on for the GPU tests"
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(256, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    rms[(8,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=256, num_warps=4)
    (key, (kernel, tail, _, direct)), = rms._cache.items()
    rms._cache[key] = (kernel, tail, "another kernel's key", direct)
    with pytest.raises(RuntimeError, match="another compiled kernel"):
        rms[(8,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=256, num_warps=4)


def test_a_disabled_launcher_and_a_profiler_hook_go_through_the_jit(rms, monkeypatch):
    from triton import knobs

    from gptoss_viz.runtime.kernels.launch import Launcher

    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(256, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    monkeypatch.setattr(Launcher, "enabled", False)
    rms[(8,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=256, num_warps=4)
    assert not rms._cache
    monkeypatch.setattr(Launcher, "enabled", True)
    seen = []

    def hook(meta):
        seen.append(meta)

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        rms[(8,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=256, num_warps=4)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert seen and not rms._cache, "a launch hook (a profiler's) must see every launch"
    rms[(8,)](*rms_args(x, w, out, 256), HAS_RES=False, BLOCK=256, num_warps=4)
    assert len(rms._cache) == 1, "with the hook removed the launcher caches again"


def test_a_whole_forward_launches_without_the_jit_once_warm(monkeypatch):
    """A 20b-shaped model (two layers: one sliding, one full): after one forward every kernel of the next is
    launched directly (the JIT is made to raise), with the same logits and sink probabilities, bit for bit, as
    forwards launched through the JIT; the MoE's weight descriptors are built once."""
    from triton.runtime.jit import JITFunction

    from gptoss_viz.runtime.kernels.launch import Launcher
    from gptoss_viz.runtime.random_checkpoint import gptoss_config, random_packed_model

    cfg = gptoss_config("20b", num_hidden_layers=2, vocab_size=2048)
    model = random_packed_model(cfg, "cuda", seed=4)
    model.prepare_kernels()
    names = ["blocks.0.attn.hook_sink_prob", "blocks.1.attn.hook_sink_prob"]
    ids = torch.randint(0, cfg.vocab_size, (300,), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.inference_mode():
        monkeypatch.setattr(Launcher, "enabled", False)
        want, want_cache = model.run_with_cache(ids, names)
        monkeypatch.setattr(Launcher, "enabled", True)
        model(ids), model.run_with_cache(ids, names)  # fill the launchers' caches
        descriptors = {k: v for k, v in model.blocks[0].mlp.experts.descriptors.items()}

        def no_jit(*a, **k):
            raise AssertionError("a launch went through the JIT after a warm forward")

        monkeypatch.setattr(JITFunction, "run", no_jit)
        got, got_cache = model.run_with_cache(ids, names)
        plain = model(ids)
    assert model.last_path == {"attention": "triton", "moe": "triton"}, model.last_path
    assert torch.equal(got, want) and torch.equal(plain, want), "logits differ from the JIT-launched forward's"
    for n in names:
        assert torch.equal(got_cache[n], want_cache[n]), f"{n} differs from the JIT-launched forward's"
    assert len(descriptors) == 4, f"{len(descriptors)} weight descriptors for one tile (want 2 blocks + 2 scales)"
    assert all(model.blocks[0].mlp.experts.descriptors[k] is v for k, v in descriptors.items())


@pytest.fixture
def hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper MoE kernels (TMA descriptor arguments) need an sm_90 GPU")
    from gptoss_viz.runtime.kernels import moe_hopper
    from gptoss_viz.runtime.mxfp4 import to_hopper_order, to_hopper_scales

    E, d, I = 8, 256, 256
    g = torch.Generator(device="cuda").manual_seed(7)
    u8 = lambda lo, hi, *s: torch.randint(lo, hi, s, generator=g, device="cuda", dtype=torch.uint8)  # noqa: E731
    bf = lambda *s: (0.5 * torch.randn(*s, generator=g, device="cuda")).to(torch.bfloat16)  # noqa: E731
    packed = (to_hopper_order(u8(0, 256, E, 2 * I, d // 32, 16)), to_hopper_scales(u8(118, 122, E, 2 * I, d // 32)),
              bf(E, 2 * I),
              to_hopper_order(u8(0, 256, E, d, I // 32, 16)), to_hopper_scales(u8(118, 122, E, d, I // 32)), bf(E, d))

    def run(x, idx, w, **kw):
        return moe_hopper.moe_mxfp4_hopper(x, idx, w, *packed, 7.0, 1.702, descriptors=kw.pop("descriptors", None),
                                           **kw)

    def inputs(N):
        x = bf(N, d)
        idx = torch.randn(N, E, generator=g, device="cuda").topk(2, -1).indices
        return x, idx, torch.randn(N, 2, generator=g, device="cuda").softmax(-1).to(torch.bfloat16)

    return moe_hopper, run, inputs


def test_direct_launches_encode_each_descriptor_for_its_own_memory(hopper, monkeypatch):
    """The Hopper MoE kernels take four TMA descriptors each. Launched directly (no CudaLauncher.__call__, tensor
    maps kept per address, shape and strides), inputs at other addresses and of other lengths, alternating, give
    what the JIT's launches give, bit for bit."""
    from triton.backends.nvidia.driver import CudaLauncher

    from gptoss_viz.runtime.kernels.launch import Launcher

    moe_hopper, run, inputs = hopper
    monkeypatch.setattr(moe_hopper._moe_hopper_launch, "_cache", {})  # only this test's kernels (see below)
    cases = [inputs(N) for N in (40, 300, 40, 301)]  # all alive at once: each at its own address
    monkeypatch.setattr(Launcher, "enabled", False)
    want = [run(*c) for c in cases]
    monkeypatch.setattr(Launcher, "enabled", True)
    for c in cases:
        run(*c)  # compiles or finds, and caches, each tile's kernel
    direct = [v[3] for v in moe_hopper._moe_hopper_launch._cache.values()]
    assert direct and all(dl is not None and len(dl.descs) == 4 for dl in direct), "no direct launch with 4 descriptors"

    def no_call(*a, **k):
        raise AssertionError("a cached launch went through CudaLauncher.__call__")

    monkeypatch.setattr(CudaLauncher, "__call__", no_call)
    descriptors = {}
    for _ in range(2):
        for c, w in zip(cases, want):
            assert torch.equal(run(*c, descriptors=descriptors), w), "a direct launch differs from the JIT's"
    assert all(dl.maps for dl in direct), "no tensor map was kept"


def test_rows_descriptor_is_what_from_tensor_builds(hopper):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    moe_hopper, _, _ = hopper
    lay = moe_hopper._rows_layout(64)
    for t in (torch.empty(300, 512, device="cuda", dtype=torch.bfloat16),
              torch.empty(300, 512, device="cuda", dtype=torch.bfloat16),  # the second from the kept fields
              torch.empty(7, 2880, device="cuda", dtype=torch.bfloat16)):
        got, want = moe_hopper._rows_descriptor(t, 64, lay), TensorDescriptor.from_tensor(t, [64, 64], lay)
        assert type(got) is TensorDescriptor and got == want and got.base is t
    with pytest.raises(AssertionError):  # an unaligned base still meets from_tensor's check
        moe_hopper._rows_descriptor(torch.empty(2 * 300 * 512 + 1, device="cuda",
                                                dtype=torch.bfloat16)[1:300 * 512 + 1].view(300, 512), 64, lay)
