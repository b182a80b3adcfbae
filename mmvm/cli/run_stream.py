"""The console of ``mmvm run``: ``flwr run --stream``'s output, shown as it comes.

What a person does not need is left out (:data:`NOISE`, and Flower's note on a
ServerApp that raised once mmvm said why: :data:`AFTER_FAILURE`), colour codes go
where the output is not a terminal, and the run id is caught as soon as flwr says it.
A log stream can drop while the run goes on (a SuperLink whose database is busy):
``mmvm run`` then follows the run again with ``flwr log RUN --stream``, which replays
the run's log from its start; :meth:`RunStream.replaying` makes the lines already
shown pass unprinted, so the console reads as one stream.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

from mmvm.cli.run_hints import CLUSTER_HINT, RAY_CLUSTER
from mmvm.cli.run_stop import nowhere

# Third-party lines a person does not need, matched exactly (what mmvm could not fix at
# the cause): Flower's unconditional note on the default simulation size (this command
# sets the size) with its how-to, and Ray tearing actors down at the end of a run.
NOISE = (re.compile(r"Since flwr 1\.32, default simulated SuperNodes changed from 10 to 2"),
         re.compile(r"To change federation size, use the following command"),
         re.compile(r"flwr federation simulation-config .* --num-supernodes <N>"),
         re.compile(r"Manually terminating ClientAppActor"),
         re.compile(r"^(\x1b\[[0-9;]*m)*(INFO|ERROR) ?(\x1b\[[0-9;]*m)*:\s*$"))  # empty log line
# Flower's note on a ServerApp that raised, after mmvm's one line saying why: the
# exception is mmvm's RunFailed, so "unhandled" and its link to exit code 700 mislead
# (700: a simulation's ServerApp, 201: a deployment's)
AFTER_FAILURE = (re.compile(r"(Simulation|ServerApp) raised an exception"),
                 re.compile(r"Exit Code: (700|201)\b"),
                 re.compile(r"An unhandled exception occurred (when running the "
                            r"simulation|in the ServerApp)"),
                 re.compile(r"For more information, visit: <https://flower\.ai/.*/"
                            r"(700|201)\.html>"),
                 re.compile(r"^\s*$"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Flower's coloured log levels
RUN_LINE = re.compile(r"Successfully started run (\d+)")
LOG_START = "Starting logstream for run_id"  # flwr run's and flwr log's first log line


class RunStream:
    """What the run's output said so far, over one or more streams of it.

    ``run_id``: the run flwr started, once said (``on_run_id`` is called with it at
    once, for a stop that comes meanwhile); ``failed``: mmvm said why the run failed;
    ``log``: the run's log lines shown, from flwr's first (:data:`LOG_START`) on."""

    def __init__(self, on_run_id: Callable[[str], None] | None = None) -> None:
        self.run_id: str | None = None
        self.failed = False
        self.log: list[str] = []
        self._on_run_id = on_run_id
        self._shown: list[str] = []  # the log lines a replay may repeat
        self._replay: int | None = None  # how many of them it has, so far

    def replaying(self) -> None:
        """The next stream replays the run's log from its start (``flwr log``): its
        log lines become ``log``, those shown already pass unprinted."""
        self._shown, self.log, self._replay = self.log, [], 0

    def follow(self, proc: subprocess.Popen, broken: Callable[[], None] | None = None
               ) -> None:
        """Show ``proc``'s output until it ends. A reader that goes (``| head``): the
        rest goes nowhere, and ``broken()`` is called."""
        plain = not sys.stdout.isatty()  # a log file or a pipe: no colour codes
        for line in proc.stdout:
            if self.log or LOG_START in line:
                self.log.append(line)
            if self._replayed(line):
                continue
            started = RUN_LINE.search(line)
            if started and self.run_id is None:
                self.run_id = started.group(1)
                if self._on_run_id is not None:
                    self._on_run_id(self.run_id)
            quiet = NOISE + AFTER_FAILURE if self.failed else NOISE
            if not any(p.search(line) for p in quiet):
                try:
                    sys.stdout.write(ANSI.sub("", line) if plain else line)
                    sys.stdout.flush()
                except BrokenPipeError:  # the rest (and at exit) to /dev/null
                    nowhere(sys.stdout, sys.stderr)
                    broken and broken()
            self.failed = self.failed or line.startswith("mmvm: run failed:")
            if RAY_CLUSTER in line:  # the SuperLink's Ray is a cluster: what to do
                self.failed = True
                print(CLUSTER_HINT, file=sys.stderr, flush=True)
        proc.wait()

    def _replayed(self, line: str) -> bool:
        """Whether ``line`` of a replay was shown already: the replay's lines are
        matched with the lines shown in order; a line that differs from the first one
        expected is shown (a note of flwr's before the log), and once the replay is
        past what was shown, or went another way, every line is."""
        k = self._replay
        if k is None:
            return False
        if k < len(self._shown) and line == self._shown[k]:
            self._replay = k + 1
            return True
        if k >= len(self._shown) or k > 0:
            self._replay = None
        return False
