"""Mid-run checkpoints: a killed run resumes where its last checkpoint left it, and ends bit for bit as an
uninterrupted run would have (on CPU; wall-clock fields aside).

`sweep.train.train(cfg, checkpoint_dir=...)` saves one file, `checkpoint_dir / CHECKPOINT_FILE`, at most every
`checkpoint.every_s` seconds of wall-clock and once more when a stop is requested (sweep/stop.py), always between
two updates, written through a temp file renamed into place (as sweep/record.py writes records), so a kill
mid-write leaves the previous checkpoint whole. It holds the network and optimizer state, every random number
generator, the carried state, the stream position, every row recorded so far (the evaluations among them, all
that budget=plateau's stopping rule reads), the clocks' bookkeeping and the evaluation/measure schedules,
together with the run's config signature (sweep.record.signature): a checkpoint of another config is ignored,
and so is one that cannot be read (with a warning: the run starts from scratch). The run folder's record writer
removes the file once run.json is written (`remove`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweep import record

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1  # bump when the payload's layout changes: an older file is then ignored, not misread


def path_in(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT_FILE


def save(folder: Path, sig: str, payload: dict[str, Any]) -> None:
    """Write `payload` (with the format and signature added) atomically to `folder / CHECKPOINT_FILE`."""
    blob = {"format": FORMAT, "signature": sig, **payload}
    record._write_atomic(path_in(folder), lambda tmp: torch.save(blob, tmp))


def load(folder: Path, sig: str) -> dict[str, Any] | None:
    """The checkpoint in `folder` when it was made by a run of signature `sig`, else None.

    A file that cannot be read (truncated, corrupt, from an incompatible version) is ignored with a warning."""
    path = path_in(folder)
    if not path.is_file():
        return None
    try:
        # weights_only=False: the payload holds plain Python objects next to tensors (numpy's RNG state, the
        # recorded rows, pandas frames of measure profiles) that the weights-only unpickler refuses. The file is
        # our own, written by save() into the run's own folder, so full unpickling trusts nothing foreign.
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} checkpoint")
    except Exception as exc:  # any failure to read means: start from scratch
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from scratch", path, type(exc).__name__, exc)
        return None
    if blob.get("signature") != sig:
        log.info("ignoring checkpoint %s: signature %s, this run is %s", path, blob.get("signature"), sig)
        return None
    return blob


def remove(folder: Path) -> None:
    """Delete the checkpoint of a run whose record is whole (and any temp file a killed save left)."""
    path_in(folder).unlink(missing_ok=True)
    for tmp in Path(folder).glob(f".{CHECKPOINT_FILE}.tmp-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def rng_states(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and states.get("cuda") is not None:
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on a machine with another number of GPUs: the device in use at least
            torch.cuda.set_rng_state(cuda[device.index or 0], device)
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def to_device(tree: Any, device: torch.device | str) -> Any:
    """A tensor, or a tuple/list of them (a carried LSTM state), moved to `device` and detached."""
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device)
    return type(tree)(to_device(t, device) for t in tree)
