"""The stream layout of TF's ptb_producer / PyTorch's word_language_model: rows, windows, carried state."""

from __future__ import annotations

import torch

IGNORE = -100  # target value for positions without a defined target (cross_entropy's ignore_index)


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into `batch_size` contiguous rows: row r holds tokens [r*L, (r+1)*L).

    The tail that does not fill a whole row is dropped. Rows are batch-first: shape [batch_size, L].
    """
    length = stream.shape[-1] // batch_size
    return stream[..., : length * batch_size].reshape(*stream.shape[:-1], batch_size, length)


def num_windows(inputs: torch.Tensor, num_steps: int) -> int:
    """Whole windows of num_steps columns in one pass; the ragged tail is dropped (as ptb_producer does)."""
    return inputs.shape[-1] // num_steps


def get_batch(inputs: torch.Tensor, targets: torch.Tensor, i: int, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window i: columns [i*num_steps, (i+1)*num_steps) of the inputs [B, L] and targets [H, B, L]."""
    cols = slice(i * num_steps, (i + 1) * num_steps)
    return inputs[:, cols], targets[:, :, cols]


def repackage_hidden(state):
    """Detach the carried state so the next window's gradient stops at the window boundary."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(repackage_hidden(s) for s in state)
