"""The one place that leans on PyTorch internals: the optimizer's wrappers, which cost an eager training loop
time and buy it nothing. Measured on these CPUs (bench/README.md): ~25 µs per update, 2-3 % of a 1 ms update,
and 1-2 s in every fresh worker process.

1. `Optimizer.step` is wrapped twice: by `_use_grad_for_differentiable` (sets grad mode, marks graph breaks for
   torch.compile, and imports `torch._dynamo` on its first call) and by `profile_hook_step` (optimizer hooks
   and a profiler `record_function` range, ~13 µs even with no profiler running). `plain_step` calls the
   optimizer's own `step` under `torch.no_grad()`, which is what those wrappers leave of it in eager mode
   when no hook is registered (the runner registers none). `inspect.unwrap` follows the standard
   `__wrapped__` chain that `functools.wraps` leaves.
2. `add_param_group`, `state_dict`, `load_state_dict` and `zero_grad` sit behind `torch._compile._disable_dynamo`,
   whose wrapper imports `torch._dynamo` on first use only to mark them "do not compile". `skip_dynamo_import`
   stores each function as its own mark (the attribute the wrapper caches it under), so the wrapper calls it
   directly. This harness never compiles; once torch._dynamo is loaded (someone does compile) it does nothing.

`tests/test_torch_api.py` pins all of it: results bit-identical to `optimizer.step()` for Adam and SGD, the
unwrapped function being the optimizer class's own `step`, and a fresh process training without importing
torch._dynamo. An upgrade of torch that changes these internals fails there, loudly, instead of silently
training differently. Nothing here runs on import: the training setup calls it.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable

import torch
import torch._compile  # defines the lazy-import wrapper (light: it does not import dynamo itself)

_DYNAMO_WRAPPER_FILE = torch._compile.__file__  # functools.wraps hides the wrapper's name, not its code's file
_DYNAMO_MARK = "__dynamo_disable"  # where _disable_dynamo's wrapper caches the marked function
_OPTIMIZERS = (torch.optim.Optimizer, torch.optim.Adam, torch.optim.SGD)


@functools.cache
def dynamo_wrapped(owners: tuple[type, ...] = _OPTIMIZERS) -> list[Callable]:
    """The functions of `owners` that sit behind `_disable_dynamo`'s lazy-import wrapper (each once; the scan
    runs once per process, not at every optimizer built)."""
    found: dict[int, Callable] = {}
    for owner in owners:
        for _, member in inspect.getmembers(owner, inspect.isfunction):
            code = getattr(member, "__code__", None)
            if code is not None and code.co_filename == _DYNAMO_WRAPPER_FILE and hasattr(member, "__wrapped__"):
                found[id(member.__wrapped__)] = member.__wrapped__
    return list(found.values())


def skip_dynamo_import() -> int:
    """Let the optimizers' `_disable_dynamo` wrappers call their function without importing torch._dynamo.
    Returns how many functions it changed (0 once torch._dynamo is loaded: then the marks cost nothing)."""
    if "torch._dynamo" in sys.modules:
        return 0
    changed = 0
    for fn in dynamo_wrapped():
        if getattr(fn, _DYNAMO_MARK, None) is None:
            setattr(fn, _DYNAMO_MARK, fn)
            changed += 1
    return changed


def plain_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """`optimizer.step()` without its hook/profiler/compile wrappers (see the module docstring).

    Falls back to the wrapped `step` where the wrappers do something in eager mode: a differentiable
    optimizer (grad mode on during the step), or optimizer hooks registered on it or globally."""
    raw = inspect.unwrap(type(optimizer).step)
    hooked = getattr(optimizer, "_optimizer_step_pre_hooks", None) or getattr(
        optimizer, "_optimizer_step_post_hooks", None
    )
    from torch.optim import optimizer as optimizer_module

    global_hooks = getattr(optimizer_module, "_global_optimizer_pre_hooks", None) or getattr(
        optimizer_module, "_global_optimizer_post_hooks", None
    )
    if optimizer.defaults.get("differentiable") or hooked or global_hooks or raw is type(optimizer).step:
        return optimizer.step  # type: ignore[return-value]
    no_grad = torch.no_grad

    def step() -> None:
        with no_grad():
            raw(optimizer)

    return step
