"""``mmvm run``'s console (mmvm/cli/run_stream.py): a run followed again after its log
stream ended shows each of its lines once. Stand-in processes print what ``flwr run``
and ``flwr log`` print (the real stream dropping under Flower:
tests/federation/test_run_command.py)."""

from __future__ import annotations

import subprocess
import sys

from mmvm.cli.run_stream import LOG_START, Console, RunStream, follow_run

RUN = ["Loading project configuration...", "Successfully started run 42",
       f"{LOG_START} `42`", "INFO :      window 1/3", "INFO :      window 2/3"]


def _code(lines: list[str]) -> str:
    """A stand-in's program: print ``lines``."""
    text = "".join(f"{ln}\n" for ln in lines)
    return f"print({text!r}, end='')"


def _printing(lines: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _code(lines)], stdout=subprocess.PIPE,
                            text=True)


def test_a_replay_of_the_log_shows_only_what_came_after(capsys):
    out = RunStream()
    out.follow(_printing(RUN))
    assert out.run_id == "42"
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


def _follow(monkeypatch, statuses: list[str], signals: list[int] | None = None,
            on_status=None) -> tuple[str | None, Console]:
    """follow_run over a stand-in flwr run, with ``statuses`` answered in turn (the
    last one for ever) and every follow a stand-in flwr log replaying the run."""
    from mmvm.cli import run_stream

    monkeypatch.setattr(run_stream, "FOLLOW_WAIT", 0.0)
    monkeypatch.setattr(run_stream, "MAX_FOLLOW", 3)
    console, out, asked = Console([sys.executable, "-c", _code(RUN)], {}), RunStream(), []
    signals = [] if signals is None else signals

    def status(run_id):
        asked.append(run_id)
        if on_status:
            on_status()
        return statuses[min(len(asked), len(statuses)) - 1]

    final = follow_run(console, out, signals, lambda: None, status,
                       lambda run_id: [sys.executable, "-c", _code(RUN[2:])])
    return final, console




def test_a_run_that_goes_on_is_followed_until_it_ends(monkeypatch, capsys):
    final, console = _follow(monkeypatch, ["running", "running", "finished:completed"])
    assert final == "finished:completed" and len(console.procs) == 3
    err = capsys.readouterr().err
    assert err.count("following it again (flwr log 42 --stream)") == 2


def test_a_run_listed_running_for_ever_is_followed_a_bounded_number_of_times(
        monkeypatch, capsys):
    final, console = _follow(monkeypatch, ["running"])
    assert final == "running" and len(console.procs) == 4  # flwr run + MAX_FOLLOW logs


def test_a_stop_while_the_status_is_asked_follows_nothing(monkeypatch, capsys):
    signals: list[int] = []
    final, console = _follow(monkeypatch, ["running"], signals,
                             on_status=lambda: signals.append(2))
    assert final == "running" and len(console.procs) == 1
    assert "following it again" not in capsys.readouterr().err


def test_a_stop_that_came_with_no_process_to_read_interrupts_the_next():
    """The signal handler found the stream ended (nothing to interrupt); the flwr log
    started next is interrupted at once instead of streaming the run to its end."""
    waiting = ("import signal, sys, time\n"
               "signal.signal(signal.SIGINT, lambda *_: sys.exit(3))\n"
               "print('up', flush=True)\ntime.sleep(30)\n")
    console = Console([sys.executable, "-c", "pass"], {})
    console.procs[0].wait()
    console.interrupt()  # nothing alive: remembered
    assert not console.kill.is_alive()
    console.follow_with([sys.executable, "-c", waiting])
    assert console.kill.is_alive()  # the new one was sent SIGINT: its kill is timed
    # it ends by the SIGINT (exit 3; -2 before its handler was set) or, where SIGINT
    # reached it ignored (a test runner's worker ignores it, and children inherit
    # that), by the kill 15 s later; never after its 30 s
    assert console.procs[-1].wait(20) in (3, -2, -9)
    console.kill.cancel()
