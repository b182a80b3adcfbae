"""``mmvm run``'s console (mmvm/cli/run_stream.py): a run followed again after its log
stream ended shows each of its lines once. Stand-in processes print what ``flwr run``
and ``flwr log`` print (the real stream dropping under Flower:
tests/federation/test_run_command.py)."""

from __future__ import annotations

import subprocess
import sys

from mmvm.cli.run_stream import LOG_START, RunStream

RUN = ["Loading project configuration...", "Successfully started run 42",
       f"{LOG_START} `42`", "INFO :      window 1/3", "INFO :      window 2/3"]


def _printing(lines: list[str]) -> subprocess.Popen:
    text = "".join(f"{ln}\n" for ln in lines)
    return subprocess.Popen([sys.executable, "-c", f"print({text!r}, end='')"],
                            stdout=subprocess.PIPE, text=True)


def test_a_replay_of_the_log_shows_only_what_came_after(capsys):
    out, seen = RunStream(), []
    out._on_run_id = seen.append
    out.follow(_printing(RUN))
    assert out.run_id == "42" and seen == ["42"]
    assert out.log == [f"{ln}\n" for ln in RUN[2:]]  # the run's log, from flwr's first line
    assert capsys.readouterr().out.splitlines() == RUN
    out.replaying()  # flwr log replays from the run's start, then goes on
    out.follow(_printing([f"{LOG_START} `42`", "INFO :      window 1/3",
                          "INFO :      window 2/3", "INFO :      window 3/3", "done"]))
    assert capsys.readouterr().out.splitlines() == ["INFO :      window 3/3", "done"]
    out.replaying()  # and a third stream skips all five
    out.follow(_printing([f"{LOG_START} `42`", "INFO :      window 1/3",
                          "INFO :      window 2/3", "INFO :      window 3/3", "done",
                          "results"]))
    assert capsys.readouterr().out.splitlines() == ["results"]


def test_a_note_before_the_replay_is_shown_and_a_replay_that_differs_is_shown_whole(
        capsys):
    out = RunStream()
    out.follow(_printing(RUN))
    capsys.readouterr()
    out.replaying()
    out.follow(_printing(["a warning of flwr's", f"{LOG_START} `42`",
                          "INFO :      window 1/3", "INFO :      something else",
                          "INFO :      window 2/3"]))
    # the note is shown, the matching start passes, and from the first line that
    # differs every line is shown (a repeat is better than a line lost)
    assert capsys.readouterr().out.splitlines() == [
        "a warning of flwr's", "INFO :      something else", "INFO :      window 2/3"]


def test_noise_is_left_out_and_the_run_id_is_the_first_named(capsys):
    out = RunStream()
    out.follow(_printing(["Successfully started run 42", "Manually terminating "
                          "ClientAppActor", "Successfully started run 43"]))
    assert out.run_id == "42"
    assert capsys.readouterr().out.splitlines() == ["Successfully started run 42",
                                                    "Successfully started run 43"]
