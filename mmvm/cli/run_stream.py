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
import signal
import subprocess
import sys
import threading
import time
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
# a run whose log stream ended while it goes on is followed again (flwr log), after a
# pause, at most this many times
ONGOING = ("pending", "starting", "running")  # flwr ls's statuses before finished:*
FOLLOW_WAIT, MAX_FOLLOW = 2.0, 20


class RunStream:
    """What the run's output said so far, over one or more streams of it.

    ``run_id``: the run flwr started, once said (a stop signal reads it meanwhile);
    ``failed``: mmvm said why the run failed; ``log``: the run's log lines shown, from
    flwr's first (:data:`LOG_START`) on."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.failed = False
        self.log: list[str] = []
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


class Console:
    """``flwr run``, then each ``flwr log`` that follows the run again (``procs``; the
    last one is read), and what a stop signal does to the one being read: SIGINT,
    then killed 15 s later if it has not ended."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.env = env
        self.procs = [self._spawn(cmd)]
        self.kill = threading.Timer(15, lambda: self.procs[-1].kill())
        self.kill.daemon = True
        self.interrupted = False

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)

    def interrupt(self) -> None:
        self.interrupted = True
        if not self.kill.is_alive() and self.procs[-1].poll() is None:
            self.procs[-1].send_signal(signal.SIGINT)
            self.kill.start()

    def follow_with(self, cmd: list[str]) -> None:
        self.procs.append(self._spawn(cmd))
        if self.interrupted:  # a signal came while there was no process to read
            self.interrupt()


def follow_run(console: Console, out: RunStream, signals: list[int],
               broken: Callable[[], None], status: Callable[[str], str],
               log_cmd: Callable[[str], list[str]]) -> str | None:
    """Read the run's output until its stream ends; while ``status(run_id)`` says the
    run goes on (and no stop signal came: ``signals``), follow it again with
    ``log_cmd(run_id)``, at most :data:`MAX_FOLLOW` times. The last status asked."""
    final = None
    while True:
        out.follow(console.procs[-1], broken)
        if signals or not out.run_id:
            return final
        final = status(out.run_id)
        if signals or final not in ONGOING or len(console.procs) > MAX_FOLLOW:
            return final
        print(f"mmvm run: the log stream of run {out.run_id} ended while the run goes "
              f"on ({final}); following it again (flwr log {out.run_id} --stream)",
              file=sys.stderr, flush=True)
        time.sleep(FOLLOW_WAIT)
        if signals:  # a stop meanwhile: nothing to follow, the run is stopped
            return final
        console.follow_with(log_cmd(out.run_id))
        out.replaying()
