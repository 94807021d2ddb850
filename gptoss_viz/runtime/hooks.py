"""Hook points: named identity modules at every tensor the explainer shows (after TransformerLens).

A `HookPoint` passes its input through unchanged unless a hook function is attached. A hook function is called
as `fn(tensor, hook)`; if it returns a tensor, that tensor replaces the activation (an intervention), otherwise
the activation goes on unchanged. Hooks are only ever attached inside `HookedModel.hooks(...)`, which removes
them in `finally`, so no hook outlives the call that asked for it and no state is shared between users.

Names come from the module tree (`blocks.3.attn.hook_pattern`); `hook_names()` lists them in forward order.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]



_deferred = threading.local()  # .checks: this thread's input checks waiting on the device (defer_check)


def defer_check(check: Callable[[], None]) -> None:
    """Queue a check of the current forward's input that needs a value the device computes (e.g. the range of
    token ids on the GPU, read without making the host wait at the forward's start): `check()` raises on bad input.
    It runs before any hook function of this thread sees an activation (HookPoint.forward), or when the forward
    calls run_deferred_checks before returning, whichever comes first; drop_deferred_checks discards it."""
    checks = getattr(_deferred, "checks", None)
    if checks is None:
        checks = _deferred.checks = []
    checks.append(check)


def run_deferred_checks() -> None:
    """Run (and clear) the current thread's deferred input checks; the first that fails raises, the rest are
    dropped with it."""
    checks = getattr(_deferred, "checks", None)
    if checks:
        pending = checks[:]
        checks.clear()
        for check in pending:
            check()


def drop_deferred_checks() -> None:
    """Forget the current thread's deferred checks (their forward ended with another error)."""
    checks = getattr(_deferred, "checks", None)
    if checks:
        checks.clear()


def observer(fn: HookFn) -> HookFn:
    """Mark a hook function as an observer: it returns None and does not write to the tensor it is given (it may
    keep it, or values computed from it). The model may then use what it computed from that tensor before the
    hook ran (HookPoint.observed_only). Returns fn."""
    fn.observes = True
    return fn


class HookPoint(nn.Module):
    """Identity at a named activation; `shape` documents it for one sequence (letters as in the model legend)."""

    def __init__(self, shape: str = "", replaceable: bool = True):
        super().__init__()
        self.shape = shape
        self.replaceable = replaceable  # False where the model does not use the value further (observation only)
        self.name = ""  # filled in by HookedModel.setup_hooks from the module tree
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """True while some hook listens here: lets the model skip work nobody asked for."""
        return bool(self._fns)

    @property
    def idle(self) -> bool:
        """True while calling it returns its input as it is and runs nothing: no hook function and no torch module
        hook (its own or a global one). The model may then compute what follows it elsewhere (the fast path)."""
        return not (self._fns or self._torch_hooked())

    @property
    def observed_only(self) -> bool:
        """True while calling it leaves its input as it is: every hook function here is marked an observer
        (`observer`) and no torch module hook is registered. What the model computed from the input alongside it
        (the fast path) then stays valid."""
        return all(getattr(fn, "observes", False) for fn in self._fns) and not self._torch_hooked()

    def _torch_hooked(self) -> bool:
        """Whether a torch module hook (this module's own or a global one) is registered."""
        return bool(self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                    or self._backward_pre_hooks or _torch_module._global_forward_hooks
                    or _torch_module._global_forward_pre_hooks or _torch_module._global_backward_hooks
                    or _torch_module._global_backward_pre_hooks)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # without nn.Module's call machinery where no torch module hook is registered (a forward passes ~15 hook
        # points a layer, each some microseconds of host time that the GPU may wait for): the identity when
        # nothing listens, else our hook functions; torch's own module hooks, where any are registered, still run
        # through nn.Module.__call__ (_torch_hooked's condition, written out: a method call costs more here)
        if (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                or self._backward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks or _torch_module._global_backward_hooks
                or _torch_module._global_backward_pre_hooks):
            run_deferred_checks()  # (before torch's pre-hooks see x)
            return super().__call__(x)
        return self.forward(x) if self._fns else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run_deferred_checks()  # no hook function sees activations of input yet to be checked
        for fn in self._fns:
            out = fn(x, self)
            if out is not None:
                if not self.replaceable:
                    raise ValueError(f"{self.name} is observation-only: the model does not read it back, so a "
                                     "replacement would change nothing (hook the tensor it comes from instead)")
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    raise ValueError(f"hook on {self.name} returned {type(out).__name__} "
                                     f"{tuple(getattr(out, 'shape', ()))}; expected a tensor of shape {tuple(x.shape)}")
                x = out
        return x

    def extra_repr(self) -> str:
        return self.shape


class HookedModel(nn.Module):
    """Root mixin: hook discovery, temporary hooks and run_with_cache for a model whose forward takes ids."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name
                self._hook_points[name] = mod

    def hook_names(self) -> list[str]:
        """Every hook point, in the order the forward pass reaches them."""
        return list(self._hook_points)

    def hook_point(self, name: str) -> HookPoint:
        try:
            return self._hook_points[name]
        except KeyError:
            raise KeyError(f"no hook point named {name!r}; see model.hook_names()") from None

    def resolve_names(self, names_filter) -> list[str]:
        """None = all; a string = one name or a regular expression; a list of names; or a predicate."""
        names = self.hook_names()
        if names_filter is None:
            return names
        if callable(names_filter):
            return [n for n in names if names_filter(n)]
        if isinstance(names_filter, str):
            if names_filter in self._hook_points:
                return [names_filter]
            try:
                pat = re.compile(names_filter)
            except re.error as e:  # a mistyped name like "blocks.[0" is still an unknown hook name
                raise KeyError(f"no hook point named {names_filter!r}, and it is not a valid regular expression "
                               f"({e}); see model.hook_names()") from None
            found = [n for n in names if pat.fullmatch(n)]
            if not found:
                raise KeyError(f"no hook point matches {names_filter!r}; see model.hook_names()")
            return found
        wanted = list(names_filter)
        for n in wanted:
            self.hook_point(n)  # raises a clear KeyError for unknown names
        return [n for n in names if n in set(wanted)]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator["HookedModel"]:
        """Attach (name, fn) hooks for the duration of the block; always removed, even on error."""
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for name, fn in fwd_hooks:
                hp = self.hook_point(name)
                hp._fns.append(fn)
                attached.append((hp, fn))
            yield self
        finally:
            for hp, fn in attached:
                hp._fns.remove(fn)

    @torch.no_grad()
    def run_with_cache(self, ids: torch.Tensor, names_filter=None, **kwargs):
        """Run the model once and return (logits, {hook name: detached activation}) for the chosen hooks."""
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach()

        with self.hooks([(n, save) for n in self.resolve_names(names_filter)]):
            logits = self(ids, **kwargs)
        return logits, cache
