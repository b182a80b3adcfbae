"""Where a site's state lives on disk between processes and across a restarted run.

Two kinds of file, because they answer two different needs:

- the **live** file ``<site>.pt``: the state a later process of the same run picks up
  (a SuperNode may start a fresh ClientApp process per message). A site that stays
  in memory for the whole run (a simulation's site host, ``client/hosts.py``) writes
  it only when a checkpoint is due.
- **snapshots** ``<site>.w<window>.pt`` at the windows the server checkpoints after
  (``WindowRequest.persist``), the last :data:`KEEP` of them, as hard links of the
  live file (no second copy of the bytes). A restarted server continues from its
  last checkpoint; a plaintext site that trained beyond it goes back to the snapshot
  of that window, so server and sites agree again and the resumed run ends as if
  nothing had happened. Secure runs checkpoint every window and never go back: a
  window is masked once (:mod:`mmvm.federation.progress`).
"""

from __future__ import annotations

import os
import pickle
import re
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

from mmvm.federation.coordinator import FederationError
from mmvm.federation.site import Site

KEEP = 2  # snapshots kept: the server's checkpoint is at most one persist window behind
# how torch.load refuses a damaged file: a short read, a pickle cut off, a zip that
# is none (and a RuntimeError of PytorchStreamReader's, :func:`damaged`). Not an
# OSError (a permission, a busy NFS server: passing, and the file whole) nor a
# RuntimeError of another kind (CUDA out of memory while loading)
UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def damaged(err: BaseException) -> bool:
    """Whether ``err`` says a state file's bytes are damaged, not that reading it
    failed for a while."""
    if isinstance(err, RuntimeError):
        return "PytorchStreamReader" in str(err)
    return isinstance(err, UNREADABLE)


class StateFileError(FederationError):
    """A site's saved state, and every snapshot of it, cannot be read."""


class SiteStore:
    """The live file of one site and its snapshots (same folder)."""

    def __init__(self, path: str | Path, fall_back: bool = True) -> None:
        self.path = Path(path)
        self.fall_back = fall_back  # to a snapshot, where the live file is damaged
        self.version = -1  # mtime of the live file this process last read or wrote
        self.seconds = 0.0  # time spent reading and writing since the last take()
        self.notes: list[str] = []  # what a reader of the site's journal should know

    def keep_losses(self, window: int, metrics: Mapping[str, float]) -> None:
        """Append window ``window``'s loss sums to ``<site>.losses.csv`` beside the
        live file (mode 0600): what a site whose node config withholds them from the
        server (``report-losses = false``) sees of its own training."""
        path = self.path.with_name(f"{self.path.stem}.losses.csv")
        keys = ["rows", "rec_nll", "reg", *sorted(k for k in metrics if k.startswith("rec_nll."))]
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            if fh.tell() == 0:
                fh.write(",".join(["window", *keys]) + "\n")
            fh.write(",".join([str(window), *(f"{float(metrics.get(k, 0.0)):.6g}"
                                              for k in keys)]) + "\n")

    def _snapshot(self, window: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.w{window}{self.path.suffix}")

    def snapshots(self) -> list[int]:
        """Windows with a snapshot, oldest first."""
        pat = re.compile(rf"{re.escape(self.path.stem)}\.w(-?\d+){re.escape(self.path.suffix)}$")
        found = (pat.match(p.name) for p in self.path.parent.glob(f"{self.path.stem}.w*"))
        return sorted(int(m.group(1)) for m in found if m)

    def refresh(self, site: Site) -> None:
        """Load the live file if another process wrote it since this one last did; a
        live file that cannot be read (truncated, damaged) gives way to the newest
        snapshot that can, which becomes the live file (:meth:`_fall_back`)."""
        on_disk = self.path.stat().st_mtime_ns if self.path.exists() else -1
        if on_disk == -1 and self.version == -1 and self.snapshots():  # removed by hand
            self._fall_back(site, FileNotFoundError(f"no {self.path.name}"))
        elif on_disk not in (-1, self.version):
            t = time.perf_counter()
            try:
                site.restore(self.path)
            except UNREADABLE as err:
                if not damaged(err):
                    raise
                self._fall_back(site, err)
            self.seconds += time.perf_counter() - t
            self.version = self.path.stat().st_mtime_ns

    def _fall_back(self, site: Site, err: BaseException) -> None:
        """Restore the newest readable snapshot and write it as the live state: a
        plaintext site is then behind, and a resumed server restarts it from that
        window (its training since is lost, as a host's restarted from a
        checkpoint). The damaged file is kept as ``<site>.pt.damaged-<time>``; the
        snapshot of the last checkpoint can be the live file itself (a hard link),
        damaged with it. A secure site never goes back (it masked the windows since,
        and masks a window once): it, or no snapshot readable, is a
        :class:`StateFileError` naming the file."""
        # the error may quote the file's path (a CRC failure does): the server
        # learns the file's name within the state folder only
        text = str(err).replace(str(self.path.parent), self.path.parent.name)
        why = f"{type(err).__name__}: {text[:160]}"
        for window in reversed(self.snapshots() if self.fall_back else []):
            try:
                site.restore(self._snapshot(window))
            except UNREADABLE as again:
                if damaged(again):
                    continue
                raise
            kept = self._set_aside()
            self.notes.append(f"state file {self.path.name} unreadable ({why}), kept as "
                              f"{kept.name if kept else 'nothing'}; restored the "
                              f"snapshot of window {window + 1}")
            self.save(site, snapshot=False)  # a new file, not the snapshot's inode
            return
        raise StateFileError(
            f"site {site.name}: its saved state {self.path.parent.name}/{self.path.name} "
            f"(in its state folder: the server learns no path) cannot be read ({why})"
            + (f", nor can any snapshot of it ({[w + 1 for w in self.snapshots()] or 'none'})"
               if self.fall_back else " and a secure site never goes back to a snapshot")
            + ": the disk or the file was damaged; start a new run") from None

    def _set_aside(self) -> Path | None:
        """The damaged live file, renamed for whoever looks into it; None: gone."""
        if not self.path.exists():
            return None
        kept = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, kept)
        return kept

    def save(self, site: Site, snapshot: bool) -> None:
        """Write the live file; with ``snapshot`` keep it as the snapshot of the
        site's last window too (and drop all but the last :data:`KEEP`)."""
        site.settle()  # not disk time: the decoder half still running (site.py)
        t = time.perf_counter()
        site.save(self.path)
        self.version = self.path.stat().st_mtime_ns
        if snapshot:
            link = self._snapshot(site.progress.window)
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            os.link(self.path, tmp)
            os.replace(tmp, link)  # atomic: a reader sees the old snapshot or this one
            for old in self.snapshots()[:-KEEP]:
                self._snapshot(old).unlink(missing_ok=True)
        self.seconds += time.perf_counter() - t

    def after(self, site: Site, request, resident: bool, secure: bool) -> None:
        """Write what ``request`` changed, when it has to be: after every message in a
        process that may not see the next one; in a ``resident`` one (the site stays
        in memory for the run) after messages other than windows, after windows the
        server checkpoints after, and, in ``secure`` runs, after every window."""
        checkpoint = request.kind == "attach" or \
            (request.kind == "window" and request.persist)
        if not resident or request.kind != "window" or checkpoint or secure:
            self.save(site, snapshot=checkpoint)

    def rollback(self, site: Site, window: int) -> str | None:
        """Go back to the snapshot of ``window`` (the server's last checkpoint), or to
        the newest before it where the site has none of that window (it was away or
        failed at that checkpoint: it is then behind, and trains on from there as a
        restarted one does), and make it the live state; what it says of that."""
        older = [w for w in self.snapshots() if w <= window]
        if not older:
            raise FederationError(
                f"site {site.name}: the server resumes after window {window + 1}, the "
                f"site trained up to window {site.progress.window + 1} and kept "
                f"snapshots of windows {[w + 1 for w in self.snapshots()]} only, none "
                f"at or before it: its state folder is not the one of that run, or "
                f"was pruned")
        site.restore(self._snapshot(older[-1]))
        self.save(site, snapshot=False)
        for newer in self.snapshots():  # of the windows it goes back from: a later
            if newer > older[-1]:       # rollback must not find them
                self._snapshot(newer).unlink(missing_ok=True)
        if older[-1] == window:
            return None
        return (f"no snapshot of window {window + 1} (away or failed at that checkpoint): "
                f"went back to its snapshot of " + (f"window {older[-1] + 1}" if
                                                    older[-1] >= 0 else "attach"))

    def take(self) -> float:
        """Seconds spent on disk since the last call (for the window's timing)."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds
