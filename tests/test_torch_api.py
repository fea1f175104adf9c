"""The PyTorch internals sweep/_torch_api.py leans on: if an upgrade changes them, these fail loudly."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest
import torch

from sweep import _torch_api
from tests.conftest import REPO


def _params(seed: int) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return list(torch.nn.LSTM(6, 5).parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ],
)
def test_plain_step_is_bit_identical_to_optimizer_step(make):
    a, b = _params(0), _params(0)
    opt_a, opt_b = make(a), make(b)
    step_b = _torch_api.plain_step(opt_b)
    assert step_b != opt_b.step  # the fast path was taken
    for k in range(5):
        torch.manual_seed(100 + k)
        grads = [torch.randn_like(p) for p in a]
        for p, g in zip(a, grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(b, grads, strict=True):
            p.grad = g.clone()
        opt_a.step()
        step_b()
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)
    assert not any(p.requires_grad is False for p in b)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_the_unwrapped_step_is_the_optimizer_class_own_step():
    for cls in (torch.optim.Adam, torch.optim.SGD):
        raw = inspect.unwrap(cls.step)
        assert raw is not cls.step  # torch still wraps it (else the fast path would be pointless)
        assert raw.__qualname__ == f"{cls.__name__}.step" and raw.__module__ == cls.__module__


def test_hooks_or_a_differentiable_optimizer_keep_the_wrapped_step():
    ps = _params(1)
    opt = torch.optim.SGD(ps, lr=0.1)
    handle = opt.register_step_pre_hook(lambda *a: None)
    assert _torch_api.plain_step(opt) == opt.step
    handle.remove()
    assert _torch_api.plain_step(opt) != opt.step
    diff = torch.optim.SGD(_params(2), lr=0.1, differentiable=True)
    assert _torch_api.plain_step(diff) == diff.step


def test_the_lazy_dynamo_wrappers_are_found():
    names = {fn.__name__ for fn in _torch_api.dynamo_wrapped()}
    assert {"add_param_group", "zero_grad", "state_dict", "load_state_dict"} <= names


def test_training_in_a_fresh_process_never_imports_dynamo_and_importing_sweep_patches_nothing():
    code = textwrap.dedent(
        """
        import sys
        import torch
        import sweep.train  # importing patches nothing
        from sweep import _torch_api
        assert all(getattr(fn, _torch_api._DYNAMO_MARK, None) is None for fn in _torch_api.dynamo_wrapped())
        from tests.conftest import TINY
        from bench.common import compose
        cfg = compose([*TINY, "optim=adam", "checkpoint.every_s=0"])
        result = sweep.train.train(cfg)
        state = sweep.train.build_setup(cfg, torch.device("cpu")).optimizer.state_dict()
        assert result.status == "complete", result.status
        print("dynamo" if "torch._dynamo" in sys.modules else "no-dynamo")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "no-dynamo"
