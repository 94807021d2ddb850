"""Launching a compiled Triton (or Gluon) kernel again without going through the JIT's argument binding.

`kernel[grid](*args)` costs 20-90 us of host time on the GPU machine (benchmarks/experiments/host_ops.py): the JIT
binds the arguments, specialises each one in native code (formatting every TensorDescriptor as a string on the
way), builds a cache key string, looks the kernel up, and only then calls the compiled kernel's launcher. A
gpt-oss forward makes ~9 such launches a layer, so at short prompts the host, not the GPU, sets the forward's
time.

`Launcher(fn)[grid](*args, **constexprs)` launches the same compiled kernel with the same arguments. It keys its
own cache on exactly what Triton 3.6 and 3.7.1 specialise an argument on, read directly from the arguments:

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

A hit also skips two layers of Python inside Triton's launcher (`_Direct`): it calls the compiled C launch
function itself, and it turns each TMA descriptor argument into the CUtensorMap and sizes Triton would pass,
keeping those per address, shape and strides (what the map is computed from), so a descriptor of the same memory
is not encoded again on every launch (~4-5 us each, four a MoE kernel).

Anything it does not know how to key (another argument type, a grid function, a launch hook installed by a
profiler) goes through the JIT as before, and so does every launch on a Triton other than the versions whose rules
this reproduces (VERIFIED_TRITON). tests/test_launch_layout.py checks, with the installed Triton and no GPU, that a
direct launch hands the C function what Triton's CudaLauncher hands it.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.runtime.driver import driver

from gptoss_viz.runtime.kernels.verify import VERIFIED_TRITON

# the Triton versions whose argument specialisation and launcher signature this module reproduces (those the GPU
# tests ran on: verify.py); any other version launches every kernel through its JIT
DIRECT = triton.__version__.startswith(VERIFIED_TRITON)
# Triton 3.7 changed the compiled kernel's C launch function: it takes the launch metadata, hooks and scratch
# buffers in another order, then the argument annotations and signature CudaLauncher builds, then the arguments as
# one sequence (3.6: the scratch buffers first, the arguments spread)
_LAUNCH_37 = not triton.__version__.startswith("3.6.")
if DIRECT:
    from triton import knobs
    from triton.backends.nvidia import driver as _nvidia

try:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor
except ImportError:  # a Triton without Gluon: no descriptor arguments to key
    _GluonDescriptor = None


def _hooked() -> bool:
    """Whether a launch hook is installed (a profiler's, e.g. Proton): those launches keep the JIT's path, which
    calls them. Triton 3.6 and 3.7 keep the hooks in chains that are never None, empty unless one was added."""
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


def cdiv(a: int, b: int) -> int:
    """triton.cdiv for host code: Triton 3.6 wraps it (and next_power_of_2) as a ConstexprFunction, whose call
    costs ~1-2 us of host time, ~3% of a forward's launch time at ~10 calls a layer."""
    return -(-a // b)


def pow2(n: int) -> int:
    """triton.next_power_of_2 for host code (see cdiv): the smallest power of two >= n (n >= 0; 0 for 0)."""
    return n if n <= 1 else 1 << (n - 1).bit_length()


_cuda_up = False  # set once a kernel has launched: CUDA is initialised from then on
_cuda_device = torch._C._cuda_getDevice if hasattr(torch._C, "_cuda_getDevice") else None


def _cuda_ready() -> None:
    """From the first launch on, the current device is read without torch.cuda.current_device's lazy-init check
    (what Triton's driver calls: ~1 us a launch); the same value."""
    global _cuda_up
    _cuda_up = _cuda_device is not None and torch.cuda.is_initialized()


class _Miss(Exception):
    """An argument this module cannot key: the launch goes through the JIT."""


def _key(args) -> tuple:
    try:
        return tuple([_KEYS[type(a)](a) for a in args])  # (a list first: ~20% less host time than a generator)
    except KeyError:
        raise _Miss from None


class _Direct:
    """A compiled kernel's launch without Triton's CudaLauncher.__call__ and its tensor-descriptor wrapper
    (driver.py: wrap_handle_tensordesc): the C launch function it ends in, called with what they would pass it
    (in Triton 3.6's order, or 3.7's: _LAUNCH_37)."""

    CACHE = 512  # tensor maps kept a kernel (a 36-layer model's weights take 72), all dropped when full

    def __init__(self, run):
        launch = run.launch
        self.descs = {}  # argument index -> its TMA metadata (None: a host descriptor Triton expands unencoded)
        if getattr(launch, "__name__", "") == "inner":  # wrap_handle_tensordesc's wrapper: its closure holds them
            cells = dict(zip(launch.__code__.co_freevars, (c.cell_contents for c in launch.__closure__)))
            launch = cells["launcher"]
            self.descs = dict(zip(sorted(cells["tensordesc_indices"]), cells["tensordesc_meta"]))
        self.raw = launch
        if _LAUNCH_37:  # the annotations and signature of the arguments as expanded (descriptors unpacked)
            self.head = (run.launch_cooperative_grid, run.launch_pdl)
            self.after_meta = (None, None, None, None, None, run.arg_annotations, run.kernel_signature)
        else:
            self.head = (run.launch_cooperative_grid, run.launch_pdl, None, None)  # no scratch memory (see build)
        self.maps = {}

    @classmethod
    def build(cls, run, n_args: int) -> "_Direct | None":
        """The direct launch of `run` (a compiled kernel's launcher), or None where it would not pass what
        CudaLauncher.__call__ passes (scratch memory to allocate; a descriptor among the keyword arguments, which
        are constexprs; a launcher not laid out as Triton 3.6's or 3.7's): such kernels keep the JIT's launcher."""
        if not (isinstance(run, _nvidia.CudaLauncher) and not getattr(run, "global_scratch_size", 1)
                and not getattr(run, "profile_scratch_size", 1)):
            return None
        try:
            direct = cls(run)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return None if any(i >= n_args for i in direct.descs) else direct

    def expand(self, i: int, desc):
        """What wrap_handle_tensordesc passes for descriptor argument i: [CUtensorMap, *shape, *strides], a pure
        function of the metadata (fixed for this kernel and i) and the descriptor's address, shape, strides and
        padding, so kept under those."""
        meta = self.descs[i]
        if meta is None:  # holds the tensor itself: nothing to keep
            return _nvidia.make_tensordesc_arg(desc, meta)
        key = (i, desc.base.data_ptr(), tuple(desc.shape), tuple(desc.strides), desc.padding,
               getattr(desc, "round_f32_to_tf32", False))  # (3.7 on: an fp32 map may round to tf32)
        got = self.maps.get(key)
        if got is None:
            if len(self.maps) >= self.CACHE:
                self.maps.clear()
            got = self.maps[key] = _nvidia.make_tensordesc_arg(desc, meta)
        return got

    def __call__(self, grid, stream, kernel, args, tail):
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        if self.descs:
            full = []
            at = 0
            for i in self.descs:  # (ascending)
                full += args[at:i]
                full += self.expand(i, args[i])
                at = i + 1
            args = (*full, *args[at:])
        if _LAUNCH_37:  # ..., the kernel's metadata, no launch metadata, hooks or scratch memory, the annotations,
            # then the arguments: a list where the descriptor wrapper made one, else CudaLauncher.__call__'s tuple
            seq = [*args, *tail] if self.descs else (*args, *tail)
            self.raw(grid[0], g1, g2, stream, kernel.function, *self.head, kernel.packed_metadata, *self.after_meta,
                     seq)
        else:  # ..., no scratch memory, the kernel's metadata, no launch metadata or hooks, the arguments
            self.raw(grid[0], g1, g2, stream, kernel.function, *self.head, kernel.packed_metadata, None, None, None,
                     *args, *tail)


class Launcher:
    """`Launcher(fn)[grid](*args, **kwargs)` does what `fn[grid](*args, **kwargs)` does, with less host time
    once the kernel has run with arguments of the same kind (see the module docstring)."""

    check = False  # also run the JIT's binding on every hit and raise if it would pick another compiled kernel
    enabled = True  # False: every launch through the JIT (same-process comparisons, benchmarks/experiments)
    call_c = True  # False: hits call the compiled kernel's CudaLauncher as the JIT does (_Direct skipped; probes)

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
        device = _cuda_device() if _cuda_up else driver.active.get_current_device()
        try:
            key = (device, _key(args), tuple(kwargs.items()))
            hit = self._cache.get(key)
        except (_Miss, TypeError):  # an argument of another type, or a keyword value that cannot be hashed
            return self.fn[grid](*args, **kwargs)
        if hit is None:
            kernel = self.fn[grid](*args, **kwargs)  # compiles (or finds) and launches
            _cuda_ready()
            if key in self._unkeyed:
                return kernel
            jit_key, bound = self._jit_key(device, args, kwargs)
            params = self.fn.params[len(args):]
            if any(p.name in kwargs and not p.is_constexpr for p in params):
                # a run-time argument given by keyword would be frozen into the tail below: not cached
                self._unkeyed.add(key)
                return kernel
            # the parameters after the positional ones are constexprs (keyed by value) or defaults
            direct = _Direct.build(kernel.run, len(args))
            self._cache[key] = (kernel, tuple(bound[p.name] for p in params), jit_key, direct)
            return kernel
        kernel, tail, jit_key, direct = hit
        if self.check:
            got, _ = self._jit_key(device, args, kwargs)
            if got != jit_key:
                raise RuntimeError(f"Launcher({self.fn.__name__}): the JIT would run another compiled kernel for "
                                   f"these arguments (its key {got!r}, cached {jit_key!r})")
        stream = driver.active.get_current_stream(device)
        if direct is not None and Launcher.call_c:
            direct(grid, stream, kernel, args, tail)
            return kernel
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *tail)
        return kernel


__all__ = ["Launcher", "cdiv", "pow2"]
