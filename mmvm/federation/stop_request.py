"""A request that a run stop (``stop.request`` in the folder of its state): ``mmvm
run``'s Ctrl-C writes it, the ServerApp reads it where a stop keeps what can be
resumed (before the sites attach, after a checkpoint window) and removes it when it
ends, whichever way. Flower's own stop did not end a simulation's ServerApp.

The request names the run it is for: one left by a run that ended without reading it
is not taken for the next run's (a resume keeps its state in the same folder)."""

from __future__ import annotations

from pathlib import Path

STOP_REQUEST = "stop.request"


class StopRequest:
    def __init__(self, folder: str | Path, run_id: str | int) -> None:
        self.path, self.run_id = Path(folder) / STOP_REQUEST, str(run_id)

    def write(self) -> None:
        self.path.write_text(f"run {self.run_id}\n")

    def asked(self) -> bool:
        """A request for this run is there."""
        try:
            return self.path.read_text().split() == ["run", self.run_id]
        except (OSError, UnicodeDecodeError):
            return False

    def pending(self) -> bool:
        """A request, this run's or another's, is there (``mmvm run`` waits on it)."""
        return self.path.exists()

    def clear_stale(self) -> None:
        """Remove a request left for another run."""
        if self.path.exists() and not self.asked():
            self.path.unlink(missing_ok=True)

    def answer(self) -> None:
        """This run has ended, or stopped: its request is answered."""
        if self.asked():
            self.path.unlink(missing_ok=True)
