"""Launching a compiled Triton (or Gluon) kernel again without going through the JIT's argument binding.

`kernel[grid](*args)` costs 20-90 us of host time on the GPU machine (benchmarks/experiments/host_ops.py): the JIT
binds the arguments, specialises each one in native code (formatting every TensorDescriptor as a string on the
way), builds a cache key string, looks the kernel up, and only then calls the compiled kernel's launcher. A
gpt-oss forward makes ~9 such launches a layer, so at short prompts the host, not the GPU, sets the forward's
time.

`Launcher(fn)[grid](*args, **constexprs)` launches the same compiled kernel with the same arguments. It keys its
own cache on exactly what Triton 3.6 specialises an argument on, read directly from the arguments:

- a tensor: its dtype and whether its address is a multiple of 16 bytes;
- an int: whether it is 1 (compiled in as a constant), whether it is a multiple of 16, and whether it needs 32,
  64 or unsigned 64 bits;
- a float or a bool: its type (never specialised on its value); None: a constant;
- a TensorDescriptor: its dtype, block shape and shared-memory layout;
- the keyword arguments (constexprs and compile options) by value, the current device.

A miss goes through the JIT (which compiles or finds the kernel, and launches it) and records the compiled kernel
under that key; a hit calls the compiled kernel's launcher on the current stream with the arguments in the
kernel's parameter order. `Launcher.check = True` (the GPU tests set it) makes every hit also run the JIT's own
binding and raise if the JIT would have chosen a different compiled kernel, so a key coarser than Triton's
cannot go unnoticed where the tests reach; `Launcher.enabled = False` sends every launch through the JIT.

Anything it does not know how to key (another argument type, a grid function, a launch hook installed by a
profiler) goes through the JIT as before, and so does every launch on a Triton other than the version whose rules
this reproduces (VERIFIED_TRITON).
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.runtime.driver import driver

from gptoss_viz.runtime.kernels.verify import VERIFIED_TRITON

# the Triton versions whose argument specialisation and launcher signature this module reproduces (3.6: the GPU
# machine's, checked by the GPU tests; verify.py); any other version launches every kernel through its JIT
DIRECT = triton.__version__.startswith(VERIFIED_TRITON)
if DIRECT:
    from triton import knobs

try:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor
except ImportError:  # a Triton without Gluon: no descriptor arguments to key
    _GluonDescriptor = None


def _hooked() -> bool:
    """Whether a launch hook is installed (a profiler's, e.g. Proton): those launches keep the JIT's path, which
    calls them. Triton 3.6 keeps the hooks in chains that are never None, empty unless one was added."""
    for h in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if h is not None and getattr(h, "calls", True):
            return True
    return False


def _int_key(v: int):
    if v == 1:
        return 1  # a constant in the compiled kernel
    width = 32 if -2**31 <= v < 2**31 else 64 if -2**63 <= v < 2**63 else 65
    return width, v % 16 == 0


def _tensor_key(t: torch.Tensor):
    return t.dtype, t.data_ptr() % 16 == 0


def _descriptor_key(d):
    return d.base.dtype, tuple(d.block_shape), d.layout


_KEYS = {torch.Tensor: _tensor_key, torch.nn.Parameter: _tensor_key, int: _int_key, float: lambda v: "fp32",
         bool: lambda v: "u1", type(None): lambda v: "none"}
if _GluonDescriptor is not None:
    _KEYS[_GluonDescriptor] = _descriptor_key


class _Miss(Exception):
    """An argument this module cannot key: the launch goes through the JIT."""


def _key(args) -> tuple:
    try:
        return tuple([_KEYS[type(a)](a) for a in args])  # (a list first: ~20% less host time than a generator)
    except KeyError:
        raise _Miss from None


class Launcher:
    """`Launcher(fn)[grid](*args, **kwargs)` does what `fn[grid](*args, **kwargs)` does, with less host time
    once the kernel has run with arguments of the same kind (see the module docstring)."""

    check = False  # also run the JIT's binding on every hit and raise if it would pick another compiled kernel
    enabled = True  # False: every launch through the JIT (same-process comparisons, benchmarks/experiments)

    def __init__(self, fn):
        from triton.runtime.jit import JITFunction

        self.fn = fn
        # not under TRITON_INTERPRET (an InterpretedFunction), nor on an unverified Triton
        self.direct = DIRECT and isinstance(fn, JITFunction)
        self._cache = {}  # our key -> (compiled kernel, the parameters after the positional ones, JIT key)
        self._unkeyed = set()  # keys whose launches always go through the JIT (see _launch)

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _jit_key(self, device, args, kwargs):
        """The key under which the JIT caches the compiled kernel for these arguments."""
        from triton.runtime.jit import compute_cache_key

        _, key_cache, _, _, binder = self.fn.device_caches[device]
        kw = dict(kwargs, debug=kwargs.get("debug", self.fn.debug) or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
        bound, specialization, options = binder(*args, **kw)
        return compute_cache_key(key_cache, specialization, options), bound

    def _launch(self, grid, *args, **kwargs):
        if not (self.enabled and self.direct) or not isinstance(grid, tuple) or _hooked():
            return self.fn[grid](*args, **kwargs)
        device = driver.active.get_current_device()
        try:
            key = (device, _key(args), tuple(kwargs.items()))
            hit = self._cache.get(key)
        except (_Miss, TypeError):  # an argument of another type, or a keyword value that cannot be hashed
            return self.fn[grid](*args, **kwargs)
        if hit is None:
            kernel = self.fn[grid](*args, **kwargs)  # compiles (or finds) and launches
            if key in self._unkeyed:
                return kernel
            jit_key, bound = self._jit_key(device, args, kwargs)
            params = self.fn.params[len(args):]
            if any(p.name in kwargs and not p.is_constexpr for p in params):
                # a run-time argument given by keyword would be frozen into the tail below: not cached
                self._unkeyed.add(key)
                return kernel
            # the parameters after the positional ones are constexprs (keyed by value) or defaults
            self._cache[key] = (kernel, tuple(bound[p.name] for p in params), jit_key)
            return kernel
        kernel, tail, jit_key = hit
        if self.check:
            got, _ = self._jit_key(device, args, kwargs)
            if got != jit_key:
                raise RuntimeError(f"Launcher({self.fn.__name__}): the JIT would run another compiled kernel for "
                                   f"these arguments (its key {got!r}, cached {jit_key!r})")
        stream = driver.active.get_current_stream(device)
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *tail)
        return kernel


__all__ = ["Launcher"]
