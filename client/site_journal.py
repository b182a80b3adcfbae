"""What a site tells the server and its own operator when it refuses or fails.

The server gets one line (:func:`said`: tagged with the site's name, the app's files
and the site's folders named as the run config and the node config name them; a
secure site, or one that keeps its numbers, only a code: :func:`failure_text`). The
operator gets that line and more in the SuperNode's log (:func:`journal`) and the
site's journals: each run's ``<site>.sent.jsonl``, and ``<state>/refused.jsonl`` for
whole runs refused before anything of the site was read (:func:`refuse_run`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context

from mmvm.atomic import WriteError
from mmvm.config import ConfigError
from mmvm.data.store import DataError
from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import MessageError
from mmvm.federation.node_config import redacted, site_name, state_folder
from mmvm.federation.posteriors import PosteriorError
from mmvm.federation.sent_log import append_sent, capped
from mmvm.federation.settings import APP_DIR
from mmvm.federation.site_errors import LOG_BYTES, SITE_TAG, public_error
from mmvm.secure.errors import SecurityError
from mmvm.training import TrainingDivergedError

# failures a site explains in one line (configuration, data, protocol, policy)
EXPECTED = (ConfigError, DataError, SecurityError, FederationError, MessageError,
            PosteriorError, TrainingDivergedError, WriteError)


def journal(site: str, line: str) -> None:
    """One line in the SuperNode's own log (its stderr): what the site refused or
    failed, where its operator looks, whatever the server is told."""
    print(f"mmvm site {site}: {capped(line)}", file=sys.stderr, flush=True)


def refuse_run(context: Context, kind: str, err: Exception) -> str:
    """The line a site sends for a run whose settings or policy it refuses, recorded
    in its journals (nothing of the site was read)."""
    nc = context.node_config
    name = site_name(nc) if nc.get("data") else nc.get("site")
    who = name or f"of partition {nc.get('partition-id', '?')}"
    cause = f" [{err.__cause__}]" if err.__cause__ is not None else ""  # the log's only
    journal(str(who), f"refused the run's {kind} message: {type(err).__name__}: {err}"
                       f"{cause}")
    text = said(str(name), err, nc) if name else f"{type(err).__name__}: {err}"
    try:  # a deployment site: its refusals of whole runs, in its state folder
        folder = state_folder(nc, str(name)) if nc.get("data") and name else None
    except ValueError:  # not a site name (the refusal says so)
        folder = None
    if folder is not None:
        try:  # the node config's (trusted) folder, made as the site's first run would
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as mkdir_err:
            journal(str(who), f"could not make its state folder {folder}: {mkdir_err}")
        if _size(folder / "refused.jsonl") < LOG_BYTES:  # its first refusals kept: a
            record_refusal(folder, "refused", kind, text, context.run_id)  # server's flood
        else:  # of refused runs must not fill the disk (this log still has each)
            journal(str(who), f"{folder / 'refused.jsonl'} is full: not recorded there")
    return capped(text)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def failure_text(site: str, root: Path, kind: str, err: Exception, secure: bool,
                  report_losses: bool, nc: Mapping) -> tuple[str | None, bool]:
    """What the server is told of a failed message: a secure site, or a plaintext
    one that keeps its numbers (an unexpected error or a divergence may quote them),
    a code and where to look (the error goes to ``<site>.errors.log``); an expected
    error its text; a deployed plaintext site's unexpected error its text too, its
    folders named by their keys (the traceback, which names them, to that log); None
    where Flower sends a simulated site's unexpected error as it is. And whether the
    error went to that log."""
    numbers = isinstance(err, TrainingDivergedError) or not isinstance(err, EXPECTED)
    log = root / f"{site}.errors.log"
    if secure or not report_losses and numbers:  # (a divergence names its step)
        public = public_error(site, log, kind, err)
        return (str(public) if secure else said(site, public, nc)), True
    if isinstance(err, EXPECTED):
        return said(site, err, nc), False
    if nc.get("data"):  # a deployment's: Flower would send its text with the paths
        public_error(site, log, kind, err)
        return said(site, err, nc), True
    return None, False


def record_refusal(folder: Path, stem: str, kind: str, text: str, run: int) -> str:
    """``text``, the one line a refused or failed message sends, recorded in the
    site's journal ``folder/stem.jsonl`` where the folder exists (the run's
    ``<site>.sent``; a whole run refused: the state folder's ``refused``). A full
    disk: the reply goes all the same, the failure is in the SuperNode's log. The
    text is :func:`~mmvm.federation.sent_log.capped`: an error may quote what the
    server sent."""
    text = capped(text)
    try:
        if folder.is_dir():
            append_sent(folder / f"{stem}.jsonl", kind, text, run)
    except OSError as err:
        journal(stem, f"could not record the refusal it sent: {err}")
    return text


def said(site: str, err: BaseException, nc: Mapping | None = None) -> str:
    """A plaintext site's failure as the server shows it: tagged with the site's name
    (at describe the server knows only a node id), the app's files named as in the
    run config (``configs/x.toml``), not by the staged copy Flower runs, and a
    deployment's folders by their node config keys (``<data>/train.parquet``): where
    the site keeps its files is not the server's to learn."""
    text = str(err).replace(f"{APP_DIR}{os.sep}", "")
    return f"{SITE_TAG.format(site=site)}{type(err).__name__}: {redacted(text, nc or {})}"
