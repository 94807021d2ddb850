"""MXFP4 (OCP Microscaling Formats spec v1.0): 4-bit E2M1 values in blocks of 32 sharing one E8M0 scale.

Layout as gpt-oss checkpoints store it, for a weight [rows, n] with n a multiple of 32:
    blocks [rows, n/32, 16] uint8: byte k of a block holds element 2k in its low nibble, 2k+1 in its high nibble
    scales [rows, n/32]     uint8: E8M0 exponent, value = fp4 * 2^(scale - 127); 255 is NaN and is rejected
A nibble is sign (bit 3) + E2M1 magnitude code (bits 0-2): 0, 0.5, 1, 1.5, 2, 3, 4, 6.

This is the readable reference (plain torch). The model only calls `mxfp4_dequant`, one expert at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 32  # values per block
BLOCK_BYTES = BLOCK // 2  # two 4-bit values per byte
SCALE_BIAS = 127  # E8M0 exponent bias
SCALE_NAN = 255  # E8M0 NaN encoding

# The 16 FP4 E2M1 values by nibble code: codes 8..15 are codes 0..7 negated.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def mxfp4_unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [..., nb, 16] -> nibble codes uint8 [..., nb, 32], element 2k from the low nibble of byte k."""
    lo = blocks & 0x0F
    hi = blocks >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)  # [..., nb, 16, 2] -> [..., nb, 32]


def mxfp4_dequant(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Packed blocks [..., nb, 16] and scales [..., nb] -> values [..., nb * 32] in `dtype`.

    Every MXFP4 value is exactly representable in fp32, and the power-of-two scale multiplies without rounding.
    One table look-up per byte gives both of its values (low nibble first), one per scale gives 2^(scale - 127).
    """
    pair_lut, scale_lut = _luts(blocks.device)
    # F.embedding is a plain row look-up, several times faster on CPU than advanced indexing
    vals = F.embedding(blocks.int(), pair_lut)  # [..., nb, 16, 2]: (element 2k, element 2k+1) of byte k
    scale = F.embedding(scales.int(), scale_lut.unsqueeze(-1))  # [..., nb, 1]: 2^(scale - 127)
    return (vals.flatten(-2) * scale).flatten(-2).to(dtype)  # [..., nb, 32] -> [..., nb * 32]


_LUT_CACHE: dict = {}


def _luts(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(byte -> its two E2M1 values [256, 2], scale byte -> 2^(s - 127) [256]) on `device`; built once per device.
    Read-only constants derived from the spec, so sharing them between users is safe."""
    key = str(device)
    if key not in _LUT_CACHE:
        fp4 = torch.tensor(FP4_VALUES, dtype=torch.float32)
        byte = torch.arange(256)
        pair = torch.stack((fp4[byte & 0x0F], fp4[byte >> 4]), dim=-1)  # [256, 2]
        scale = torch.ldexp(torch.ones(256), torch.arange(256, dtype=torch.float32) - SCALE_BIAS)  # [256]
        scale[SCALE_NAN] = float("nan")
        _LUT_CACHE[key] = (pair.to(device), scale.to(device))
    return _LUT_CACHE[key]


def check_scales(scales: torch.Tensor, name: str) -> None:
    """Reject E8M0 NaN scales (255): the OCP spec defines them as NaN, and no trained weight should hold one."""
    bad = scales == SCALE_NAN
    if bool(bad.any()):
        n = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(f"{name}: {n} MXFP4 scale(s) are 255, which is NaN in E8M0 (first at index {first})")


def mxfp4_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values [..., n] (n % 32 == 0) -> (blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]).

    Each block takes the smallest power-of-two scale that fits its largest magnitude within 6 (the largest E2M1
    value), then every value is rounded to the nearest E2M1 value (ties to the smaller magnitude code).
    Used to write checkpoints (tests, the nano models); the inverse of `mxfp4_dequant` up to rounding.
    """
    if w.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of the MXFP4 block size {BLOCK}")
    x = w.detach().to(torch.float32).unflatten(-1, (-1, BLOCK))  # [..., nb, 32]
    amax = x.abs().amax(-1)  # [..., nb]
    # smallest e with amax / 2^e <= 6; all-zero blocks get the smallest scale
    e = torch.ceil(torch.log2(amax.clamp_min(torch.finfo(torch.float32).tiny) / 6.0))
    e = e.clamp(-SCALE_BIAS, SCALE_NAN - 1 - SCALE_BIAS)
    scaled = torch.ldexp(x, -e.unsqueeze(-1))  # [..., nb, 32], |scaled| <= 6
    mags = torch.tensor(FP4_VALUES[:8], dtype=torch.float32, device=w.device)
    code = (scaled.abs().unsqueeze(-1) - mags).abs().argmin(-1)  # nearest magnitude code 0..7
    code = code + 8 * (scaled < 0)  # sign bit
    code = code.to(torch.uint8)  # [..., nb, 32]
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)  # [..., nb, 16]
    scales = (e + SCALE_BIAS).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


# ---- the Hopper kernel's order of the packed values (kernels/moe_hopper.py) ------------------------------------
# The same bytes re-arranged, so that each thread of Hopper's wgmma finds the values of its register fragment in
# 8 consecutive bytes. Within each 64-value chunk of a row (two blocks, 32 bytes), lane group t (0..3) gets bytes
# 8t..8t+7, four per block p (0, 1); byte b of those four holds the value at K = 32p + 2t + (b & 1) + 8 (b >> 1)
# in its low nibble and K + 16 in its high nibble (K counted inside the chunk). The scales are unchanged.

def _hopper_source() -> torch.Tensor:
    """[64]: for each nibble position of a chunk in the Hopper order (byte * 2 + high), the K of its value."""
    src = torch.empty(64, dtype=torch.long)
    for t in range(4):
        for p in range(2):
            for b in range(4):
                for high in range(2):
                    src[2 * (8 * t + 4 * p + b) + high] = 32 * p + 16 * high + 8 * (b >> 1) + 2 * t + (b & 1)
    return src


def _reorder_nibbles(blocks: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """blocks [..., nb, 16] (nb even) with the nibbles of each 64-value chunk taken from positions `source`."""
    *lead, nb, _ = blocks.shape
    if nb % 2:
        raise ValueError(f"the Hopper order needs rows of a multiple of 64 values, got {nb * 32}")
    codes = mxfp4_unpack_codes(blocks).reshape(*lead, nb // 2, 64)[..., source.to(blocks.device)]
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).reshape(blocks.shape)


def to_hopper_order(blocks: torch.Tensor) -> torch.Tensor:
    """Checkpoint-order blocks [..., nb, 16] -> the same values in the Hopper kernel's order (same shape)."""
    return _reorder_nibbles(blocks, _hopper_source())


def from_hopper_order(blocks: torch.Tensor) -> torch.Tensor:
    """The inverse of to_hopper_order."""
    return _reorder_nibbles(blocks, torch.argsort(_hopper_source()))


# The Hopper kernel's order of the scales: for each 64-value chunk of the rows (one K step of the kernel), the two
# scales of every row together, all rows of a chunk before the next chunk: [..., N, nb] holds, per leading index,
# the [N, nb/2, 2] values in the order [nb/2, N, 2] (same shape), so that one K step's scales of 64 consecutive rows
# are 128 consecutive bytes (one TMA box).

def to_hopper_scales(scales: torch.Tensor) -> torch.Tensor:
    """Checkpoint-order scales [..., N, nb] (nb even) -> the same values in the Hopper kernel's order."""
    *lead, n, nb = scales.shape
    if nb % 2:
        raise ValueError(f"the Hopper order needs rows of a multiple of 64 values, got {nb * 32}")
    return scales.reshape(*lead, n, nb // 2, 2).transpose(-3, -2).contiguous().reshape(scales.shape)


def from_hopper_scales(scales: torch.Tensor) -> torch.Tensor:
    """The inverse of to_hopper_scales."""
    *lead, n, nb = scales.shape
    return scales.reshape(*lead, nb // 2, n, 2).transpose(-3, -2).contiguous().reshape(scales.shape)
