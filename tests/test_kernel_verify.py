"""kernels/verify.py: which Triton versions the fast path trusts, and the Hopper MoE kernels' self-test that decides
on the others. The decision is plain Python (CPU); the self-test itself runs on an sm_90 GPU (skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch

from gptoss_viz.runtime.kernels import verify

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("version", ["3.6.0", "3.7.1"])
def test_a_verified_triton_is_trusted_without_running_the_self_test(version):
    def must_not_run():
        raise AssertionError("the self-test ran on a verified Triton")

    ok, why = verify.trusted(version, must_not_run, "the kernels")
    assert ok and f"verified on Triton {version}" in why


@pytest.mark.parametrize("version", ["3.7.0", "3.8.0", "3.9.0", "3.60.0"])  # ("3.6." is no prefix of 3.60)
def test_another_triton_is_trusted_only_if_the_self_test_passes(version):
    assert not verify.verified(version)
    ok, why = verify.trusted(version, lambda: None, "the kernels")
    assert ok and "passed their self-test" in why and version in why
    ok, why = verify.trusted(version, lambda: "tile (128, 32): relative difference 0.9", "the kernels")
    assert not ok and "relative difference 0.9" in why and "other MoE kernels" in why


def test_a_self_test_that_raises_means_not_trusted_and_no_crash():
    def compile_error():
        raise RuntimeError("at 36:12:\nasync_copy_global_to_shared has been removed; call async_load instead")

    ok, why = verify.trusted("3.9.0", compile_error, "the kernels")
    assert not ok and "RuntimeError: async_copy_global_to_shared has been removed" in why


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Hopper MoE kernels need an sm_90 GPU")
def test_the_hopper_self_test_passes_on_the_product_kernels():
    from gptoss_viz.runtime.kernels import moe_hopper

    assert moe_hopper.self_test(torch.device("cuda")) is None
    assert moe_hopper.trusted(torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Hopper MoE kernels need an sm_90 GPU")
@pytest.mark.parametrize("break_it", ["scaled", "rows swapped", "nan"])
def test_the_hopper_self_test_catches_a_wrong_kernel(monkeypatch, break_it):
    from gptoss_viz.runtime.kernels import moe_hopper

    real = moe_hopper.moe_mxfp4_hopper

    def wrong(*args, **kwargs):
        out = real(*args, **kwargs)
        if break_it == "scaled":  # a decode off by a factor (e.g. a scale misread)
            return out * 1.05
        if break_it == "rows swapped":  # results written to the wrong tokens
            return out.roll(1, 0)
        return torch.where(torch.arange(out.shape[0], device=out.device)[:, None] == 7, float("nan"), out)

    monkeypatch.setattr(moe_hopper, "moe_mxfp4_hopper", wrong)
    problem = moe_hopper.self_test(torch.device("cuda"))
    assert problem is not None and "tile" in problem


@pytest.fixture
def unverified_triton(monkeypatch):
    """moe_hopper sees a Triton it was not verified on; its trust is decided afresh, and forgotten afterwards."""
    from gptoss_viz.runtime import gptoss
    from gptoss_viz.runtime.kernels import moe_hopper

    monkeypatch.setattr(moe_hopper.triton, "__version__", "3.99.0")
    caches = (moe_hopper._trusted, gptoss._hopper_moe_ok)  # (the model keeps the answer per shape too)
    for c in caches:
        c.cache_clear()
    yield moe_hopper
    for c in caches:
        c.cache_clear()


def _moe_module():
    from gptoss_viz.runtime.configs import GptOssConfig
    from gptoss_viz.runtime.gptoss import MoE

    cfg = GptOssConfig(vocab_size=16, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=1, num_key_value_heads=1, head_dim=16, num_local_experts=8,
                       num_experts_per_tok=2, sliding_window=128, layer_types=("sliding_attention",),
                       max_position_embeddings=256, quant_method="mxfp4")
    g = torch.Generator(device="cuda").manual_seed(3)
    with torch.device("cuda"):
        moe = MoE(cfg, packed=True)
    ex = moe.experts
    for name in ("gate_up_proj", "down_proj"):
        getattr(ex, name + "_blocks").copy_(torch.randint(0, 256, getattr(ex, name + "_blocks").shape, generator=g,
                                                          device="cuda", dtype=torch.uint8))
        getattr(ex, name + "_scales").fill_(120)
    ex.gate_up_proj_bias.data = ex.gate_up_proj_bias.data.to(torch.bfloat16)
    ex.down_proj_bias.data = ex.down_proj_bias.data.to(torch.bfloat16)
    moe.router.weight.data = torch.randn(8, 128, generator=g, device="cuda").to(torch.bfloat16)
    moe.router.bias.data = moe.router.bias.data.to(torch.bfloat16)
    return moe, torch.randn(37, 128, generator=g, device="cuda").to(torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Hopper MoE kernels need an sm_90 GPU")
@pytest.mark.parametrize("passes", [True, False])
def test_on_an_unverified_triton_the_model_follows_the_self_test(unverified_triton, monkeypatch, passes):
    moe_hopper = unverified_triton
    ran = []
    monkeypatch.setattr(moe_hopper, "self_test", lambda device: ran.append(device) or (None if passes else "forced"))
    moe, x = _moe_module()
    with torch.no_grad():
        fast = moe(x)
        moe.use_kernels = False
        ref = moe(x)
    assert len(ran) == 1, "the self-test runs once per process and device"
    assert moe.experts.blocks_order == ("hopper" if passes else "checkpoint")  # Hopper kernels, or moe.py's
    assert torch.isfinite(fast).all()
    assert ((fast.float() - ref.float()).norm() / ref.float().norm()).item() < 2e-2
