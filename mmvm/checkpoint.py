"""Checkpoints that are never half-written (through :func:`mmvm.atomic.atomic_write`),
and the files a centralized run folder holds with its checkpoint.

``mmvm train`` writes ``checkpoint.pt`` and, right after it and from it,
``config.json`` and ``metrics.csv`` (:func:`save_run`): the three describe one model
(metrics.csv may run a few epochs ahead of the checkpoint, never behind it).

A checkpoint is serialized in memory first and then written whole, so a full disk is
one :class:`~mmvm.atomic.WriteError` naming the file (torch's own writer would turn it
into an opaque RuntimeError); weights holding NaN or inf are never written, and a
checkpoint read for a resume, an evaluation or an encoding is checked field by field
(:func:`training_state`): an edited or damaged one is one line naming the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mmvm.atomic import atomic_write, existing_part
from mmvm.finite import nonfinite_tensor

METRIC_FIELDS = ["epoch", "step", "loss", "rec_nll", "reg", "alpha", "seconds"]
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.csv")  # what mmvm train writes
# what resuming needs; a federated run's checkpoint has no optimizer (MODEL_KEYS)
STATE_KEYS = ("config", "model", "optimizer", "epoch", "step", "history")
MODEL_KEYS = ("config", "model")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` atomically (mode 0600); ValueError, nothing written, when
    its ``model`` weights hold NaN or inf."""
    weights = state.get("model") if isinstance(state, dict) else None
    bad = nonfinite_tensor(weights) if isinstance(weights, dict) else None
    if bad:
        raise ValueError(f"refusing to write {path}: the model's weight {bad}; the "
                         "training diverged (the previous checkpoint, if any, is kept)")
    write_torch(path, state)


def write_torch(path: str | Path, obj: Any) -> None:
    """torch.save ``obj`` into memory, then write the bytes atomically (mode 0600): an
    error while writing is a :class:`~mmvm.atomic.WriteError` naming ``path`` (the
    file there is intact), never torch's "unexpected pos" RuntimeError."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


class DamagedFile(zipfile.BadZipFile):
    """A torch file whose bytes changed after it was written (a zip entry's CRC)."""


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file whose zip entries are first checked
    against their CRC-32s: torch does not check them, so bytes changed after the
    write (a disk, a copy) loaded as other weights, and the run failed later with a
    NaN loss blamed on the learning rate. A bad entry is a :class:`DamagedFile`
    naming the file and the entry (a ``BadZipFile``: callers that fall back to a
    snapshot take it as damage)."""
    with zipfile.ZipFile(path) as archive:  # ~0.1 s for 100 MB
        bad = archive.testzip()
    if bad is not None:
        raise DamagedFile(f"{path}: its entry {bad!r} fails its CRC check: the "
                                 f"file's bytes changed after it was written")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; a missing file raises FileNotFoundError, a corrupt one ValueError.

    Only tensors and plain data are unpickled (``weights_only``): a file holding other
    Python objects is refused, never loaded, since loading those can run code.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return load_torch(path, map_location)
    except DamagedFile as err:
        raise ValueError(f"checkpoint {err}") from None
    except zipfile.BadZipFile:  # not a zip: torch's files are
        raise ValueError(_unreadable(path)) from None
    except (OSError, MemoryError, torch.cuda.OutOfMemoryError):  # not the file's fault
        raise
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # torch's text advises an unsafe load
            raise ValueError(f"checkpoint {path} cannot be read: it holds Python objects "
                             "other than tensors and plain data, which mmvm does not load "
                             "(loading them could run code)") from None
        raise ValueError(_unreadable(path)) from None
    except Exception:  # foreign, corrupted or cut short; torch's text says nothing more
        raise ValueError(_unreadable(path)) from None


def _unreadable(path: Path) -> str:
    return (f"checkpoint {path} cannot be read: it is not a torch checkpoint, or it is "
            "truncated (a partial copy or download)")


def training_state(path: Path, map_location: str | torch.device = "cpu",
                   keys: tuple[str, ...] = STATE_KEYS) -> dict[str, Any]:
    """A run's checkpoint holding ``keys`` (default: all a resume needs), each of its
    type (:func:`field_problem`) and its weights finite; ValueError naming the file
    for one that cannot be read or holds something else (e.g. a coherence judge's,
    or a federated run's for a resume), an edited field, or NaN weights."""
    state = load_checkpoint(path, map_location=map_location)
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
    if missing:
        kind = "a training checkpoint to resume" if keys == STATE_KEYS else "a run's model"
        raise ValueError(f"checkpoint {path} is not {kind} (it has no {', '.join(missing)})")
    problem = field_problem(state, resume=keys == STATE_KEYS)
    if problem:
        raise ValueError(f"checkpoint {path}: {problem}; mmvm never writes that (the file "
                         "was edited or damaged)")
    bad = nonfinite_tensor(state["model"])
    if bad:
        raise ValueError(f"checkpoint {path}: the model's weight {bad}; the training "
                         "diverged before it was written")
    return state


_INTEGERS = ("epoch", "step")


def field_problem(state: dict[str, Any], resume: bool = True) -> str | None:
    """What is wrong with the fields of a checkpoint ``state`` that are there (their
    presence is the caller's): config a table, model a table of tensors, epoch and
    step whole numbers >= 0, history a list of tables; for a ``resume`` also the
    optimizer's state and one metrics row per epoch. None when all is well."""
    if not isinstance(state["config"], dict):
        return f"config is {_a(state['config'])}, not a table"
    model = state["model"]
    if not isinstance(model, dict):
        return f"model is {_a(model)}, not a table of weight tensors"
    odd = next((k for k, v in model.items() if not (isinstance(k, str)
                                                     and torch.is_tensor(v))), None)
    if odd is not None:
        return f"model entry {odd!r} is {_a(model[odd])}, not a weight tensor"
    for key in _INTEGERS:
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key} is {value!r}, not a whole number >= 0"
    history = state.get("history", [])
    if not isinstance(history, list):
        return f"history is {_a(history)}, not a list of metrics rows"
    row = next((i for i, r in enumerate(history) if not isinstance(r, dict)), None)
    if row is not None:
        return f"history row {row} is {_a(history[row])}, not a table of metrics"
    if not resume:
        return None
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        return "optimizer is not an optimizer's state (a table of state and param_groups)"
    if len(history) != state["epoch"]:
        return f"history has {len(history)} rows for epoch {state['epoch']} (one per epoch)"
    for i, r in enumerate(history):
        extra = sorted(set(r) - set(METRIC_FIELDS), key=str)
        if extra:
            return f"history row {i} has {extra[0]!r}, not a metrics.csv column"
    return None


def _a(value: Any) -> str:
    """``a list``, ``an int``: a value's type in words."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def check_run_folder(folder: Path, names: tuple[str, ...] = RUN_FILES,
                     key: str = "train.out_dir", elsewhere: bool = True) -> None:
    """Refuse, before any work, a run folder that cannot take the files ``names``: a
    file where the folder (or a folder above it) should be, one of ``names`` that is
    a folder, a folder this user may not write in. ``key`` is the setting or option
    that gave the folder; ``elsewhere``: advise choosing another."""
    other = f"; choose another {key}" if elsewhere else ""
    existing = existing_part(folder)
    if not existing.is_dir():
        raise ValueError(f"{key} = {folder}: {existing} is a file, not a folder{other}")
    if existing == folder:
        for name in names:
            path = folder / name
            if path.exists() and not path.is_file():
                raise ValueError(f"{path} is a folder (or another non-file) where the run's "
                                 f"{name} goes; move it away{other.replace(';', ' or')}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"no permission to write in {existing} ({key} = {folder}){other}")


def save_run(out_dir: Path, state: dict[str, Any]) -> None:
    """The checkpoint, then config.json and metrics.csv from it (each atomically): a
    stop in between leaves the checkpoint, from which a resume rewrites the two."""
    save_checkpoint(out_dir / "checkpoint.pt", state)
    write_companions(out_dir, state)


def write_companions(out_dir: Path, state: dict[str, Any]) -> None:
    """config.json and metrics.csv as the checkpoint ``state`` says (a file already
    so is left untouched)."""
    _write_if_changed(out_dir / "config.json", json.dumps(state["config"], indent=2).encode())
    write_metrics(out_dir, state["history"])


def write_metrics(out_dir: Path, history: list[dict[str, float]]) -> None:
    """metrics.csv, one row per epoch of ``history`` (atomically; unchanged: untouched)."""
    _write_if_changed(out_dir / "metrics.csv", _metrics_csv(history))


def _write_if_changed(path: Path, data: bytes) -> None:
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write(path, data)


def _metrics_csv(history: list[dict[str, float]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue().encode()


def checked_optimizer_state(state: dict | None, n_params: int, path: str | Path
                             ) -> dict | None:
    """A saved Adam state that fits a model of ``n_params`` parameter tensors: one
    parameter group over all of them, state only for those (checked here, where the
    file is read; the optimizer itself is built at the first step)."""
    if state is None:
        return None
    groups = state.get("param_groups") if isinstance(state, dict) else None
    ok = (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
          and list(groups[0].get("params", ())) == list(range(n_params))
          and isinstance(state.get("state"), dict)
          and set(state["state"]) <= set(range(n_params)))
    if not ok:
        raise ValueError(f"{path}: the saved optimizer state does not fit this site's "
                         f"model (one parameter group over its {n_params} parameter "
                         f"tensors)")
    return state
