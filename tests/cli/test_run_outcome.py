"""What `mmvm run` says when a run is stopped or ends without completing
(mmvm/cli/run.py, mmvm/cli/run_hints.py): how to continue it, or what to change.
A stand-in for flwr where a real run is not needed."""

from __future__ import annotations

import os
import subprocess
import sys

LATE = """
import signal, sys, time
def late(*_):  # the run was started just as the stop came
    print("Successfully started run 42", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, late)
print("starting", flush=True)
time.sleep(30)
"""

RUNNING = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
print("Successfully started run 42", flush=True)
time.sleep(30)
"""


def test_a_stop_finds_the_run_named_after_it_came(tmp_path, capsys):
    """SIGTERM before flwr run has said which run it started: its output is read to the
    end, so the run is still found and stopped (here with a stand-in for flwr)."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run

    args = argparse.Namespace(connection=None, run_config="resume='7'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    code = _run(args, [sys.executable, "-c", LATE])
    assert code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    # a resumed run's state stays under the id it continues
    assert "stopped run 42; continue it with the same --run-config and resume='7' (if " \
           "its sites had attached)" in err  # no state of it on this machine
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_run_stopped_after_its_results_were_written_is_sent_to_evaluate(tmp_path,
                                                                          capsys):
    """Stopped while the server evaluated: its sites already answered the final
    evaluation, so a resume is refused there; the message says to evaluate."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run

    (tmp_path / "run-42").mkdir()
    (tmp_path / "run-42" / "results.json").write_text("{}")
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert _run(args, [sys.executable, "-c", LATE]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"stopped run 42 after its training was written ({tmp_path / 'run-42'})" in err
    assert f"mmvm evaluate --run {tmp_path / 'run-42'}" in err and "resume=" not in err


def test_a_run_stopped_before_its_sites_attached_is_stopped_at_once(tmp_path, capsys):
    """No checkpoint yet (a Ray that hangs, sites that never answer): the stop waited
    up to 300 s for a window that could not begin, then said to resume a run that
    had nothing to resume. Now the stop waits only while the run is listed as running
    (at most 60 s) and the request is left for the ServerApp, which reads it before
    its sites attach or just after (flwr stop alone left a simulation's ServerApp
    training)."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run
    from mmvm.federation.stop_request import StopRequest

    (tmp_path / "run-42").mkdir()  # the ServerApp made it; it writes state at attach
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert _run(args, [sys.executable, "-c", RUNNING]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped run 42 before its sites attached" in err and "nothing to resume" in err
    # no ServerApp answered here (the stand-in has none): said, with what to do if it does
    assert "its ServerApp has not answered yet: should it write server_state.pt" in err
    assert "stopping run 42 after its current window" not in err  # no wait for one
    assert StopRequest(tmp_path / "run-42", 42).asked()  # for the ServerApp


ATTACHED_MEANWHILE = """
import pathlib, signal, sys, time
def attached(*_):  # the ServerApp read the early request only after its sites attached
    pathlib.Path(sys.argv[1]).write_text("{}")
    sys.exit(0)
signal.signal(signal.SIGINT, attached)
print("Successfully started run 42", flush=True)
time.sleep(30)
"""


def test_an_early_stop_read_after_the_sites_attached_says_to_resume(tmp_path, capsys):
    """The request was made before any state existed, and the ServerApp read it after
    attach, with its state written: the run is resumable, and was said not to be."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run
    from mmvm.federation.server_state import STATE_FILE

    (tmp_path / "run-42").mkdir()
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    state = tmp_path / "run-42" / STATE_FILE
    assert _run(args, [sys.executable, "-c", ATTACHED_MEANWHILE, str(state)]) == \
        128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert state.is_file() and "before its sites attached" not in err
    assert "stopped run 42; continue it with the same --run-config and resume='42'" in err


def test_an_early_stop_waits_for_a_serverapp_that_attaches_after_flwr_run_ended(
        tmp_path, capsys):
    """A flaky-lab walkthrough: Ctrl-C during set-up said "nothing to resume" and
    returned, while the simulation's ServerApp (flwr stop does not end it) attached
    the sites, wrote its state and stopped, resumable, 15 s later. The stop now waits
    for the ServerApp's answer (it removes the request when it ends) before saying
    what is left; here it answers 2 s after flwr run ended, with its state written."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run
    from mmvm.federation.server_state import STATE_FILE
    from mmvm.federation.stop_request import StopRequest

    (tmp_path / "run-42").mkdir()
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")

    def serverapp():  # attaches, writes its state, reads the request, ends
        (tmp_path / "run-42" / STATE_FILE).write_text("{}")
        StopRequest(tmp_path / "run-42", 42).answer()

    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    threading.Timer(3.0, serverapp).start()
    assert _run(args, [sys.executable, "-c", RUNNING]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopping run 42 before its sites attach" in err
    assert "nothing to resume" not in err
    assert "stopped run 42; continue it with the same --run-config and resume='42'" in err


def test_a_run_that_outlived_flwr_run_says_what_to_do(monkeypatch, capsys):
    """The SuperLink was killed: flwr run ended, and mmvm run said only the status
    (the ServerApp trained on without it). A run still listed as running once its
    stream was followed again as often as mmvm run does is said to go on."""
    import argparse

    from mmvm.cli import run as run_cli

    monkeypatch.setattr(run_cli, "status", lambda *a: "unknown (connection refused)")
    args = argparse.Namespace(connection=None, run_config="resume='7' exchange='step'")
    assert run_cli._final(["flwr", "run"], args, "42", 1) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmvm run: run 42 unknown (connection refused)\n"
                          "mmvm run: flwr run lost the SuperLink ")
    assert "continue it with the same --run-config and resume='7'" in err
    args.connection = "lab"
    assert run_cli._final(["flwr", "run"], args, "42", 0, final="running") == 1
    err = capsys.readouterr().err
    assert "kept ending while the run goes on" in err and "resume" not in err
    assert "flwr log 42 lab --stream" in err and "flwr ls lab --run-id 42" in err


def test_a_run_whose_serverapp_died_says_how_to_resume(monkeypatch, capsys):
    """The ServerApp was killed (Flower: 'No heartbeat received from the task'): the
    run read finished:failed, and mmvm run said nothing of resuming it, as it does
    when the SuperLink dies or the ServerApp fails for a reason it names."""
    import argparse

    from mmvm.cli import run as run_cli

    monkeypatch.setattr(run_cli, "status", lambda *a: "finished:failed")
    args = argparse.Namespace(connection=None, run_config="exchange='step'")
    assert run_cli._final(["flwr", "run"], args, "42", 0) == 1
    err = capsys.readouterr().err
    assert "ended without a reason of its own" in err and "resume='42'" in err
    # a ServerApp that said why (and gave its own hint when it had state): no second one
    assert run_cli._final(["flwr", "run"], args, "42", 0, said=True) == 1
    assert "resume" not in capsys.readouterr().err


def test_a_simulation_on_a_ray_cluster_given_a_cpu_count_says_what_to_do(capsys):
    """deploy/README said to set RAY_ADDRESS only for the SuperLink: mmvm run then
    gave the simulation a CPU count, which Ray refuses on an existing cluster (a
    ValueError among Flower's tracebacks, and 'finished:failed')."""
    from mmvm.cli.run_stream import RunStream

    lines = ("Successfully started run 42\n"
             "ValueError: When connecting to an existing cluster, num_cpus and num_gpus "
             "must not be provided.\n")
    proc = subprocess.Popen([sys.executable, "-c", f"print({lines!r}, end='')"],
                            stdout=subprocess.PIPE, text=True)
    out = RunStream()
    out.follow(proc)
    assert (out.run_id, out.failed) == ("42", True)  # said: no "without a reason" hint
    err = capsys.readouterr().err
    assert "give mmvm run the same RAY_ADDRESS" in err


def test_the_first_stop_asks_at_once_and_a_second_stops_now(tmp_path, capsys):
    """The stop request waited for flwr run to end (up to 15 s, the run training on
    and nothing said); now the first signal writes it while the run streams on, and
    a second ends it in Flower at once, taking the request back."""
    import argparse
    import signal
    import threading

    from mmvm.cli.run import _run
    from mmvm.federation.server_state import STATE_FILE
    from mmvm.federation.stop_request import STOP_REQUEST

    folder = tmp_path / "run-42"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"a checkpoint")
    seen = []
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    threading.Timer(2.0, lambda: seen.append((folder / STOP_REQUEST).exists())).start()
    threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    assert _run(args, [sys.executable, "-c", RUNNING]) == 128 + signal.SIGTERM
    assert seen == [True]  # written while flwr run still streamed
    err = capsys.readouterr().err
    assert "stopping run 42 after its current window" in err
    assert "stopping run 42 now, in Flower" in err  # the second, said when it came
    assert "run 42 did not end its window yet; stopping it in Flower" in err
    assert "stopped run 42; continue it with the same --run-config and resume='42'" in err
    assert f"resume='42' (from {folder / STATE_FILE})" in err  # not "if its sites ..."
    assert not (folder / STOP_REQUEST).exists()


FINISHING = """
import sys, time
from pathlib import Path
folder = Path(sys.argv[1])
print("Successfully started run 42", flush=True)
while not (folder / "stop.request").exists():
    time.sleep(0.1)
time.sleep(0.5)  # its last window: a stop is not read there, the run completes
(folder / "results.json").write_text("{}")
(folder / "stop.request").unlink()  # the ServerApp answers it as it ends
"""


def test_a_stop_in_the_last_window_lets_the_run_complete_and_says_so(
        tmp_path, capsys, monkeypatch):
    """A stop in the last window (or the final evaluation) is not read: the run
    completes. mmvm run waited 300 s for an answer after the run had ended, then said
    "did not end its window" and "cannot be resumed", and exited 130."""
    import argparse
    import signal
    import threading

    from mmvm.cli import run as run_cli
    from mmvm.federation.server_state import STATE_FILE

    folder = tmp_path / "run-42"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"a checkpoint")
    monkeypatch.setattr(run_cli, "status", lambda *a: "finished:completed")
    args = argparse.Namespace(connection=None, run_config=f"out-dir='{tmp_path}'")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    assert run_cli._run(args, [sys.executable, "-c", FINISHING, str(folder)]) == 0
    err = capsys.readouterr().err
    assert "stopping run 42 after its current window" in err
    assert "run 42 completed before the stop took effect" in err
    assert "did not end its window" not in err and "cannot be resumed" not in err



CHATTY = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
print("Successfully started run 42", flush=True)
for k in range(40):  # 2 s: a stop asked of the ServerApp waits for its end
    print(f"window {k}", flush=True)
    time.sleep(0.05)
"""

READ_BY_HEAD = """
import argparse, sys
from mmvm.cli.run import _run
args = argparse.Namespace(connection=None, run_config=sys.argv[1])
sys.exit(_run(args, [sys.executable, "-c", sys.argv[2]]))
"""


def test_a_reader_that_goes_away_stops_the_run_as_a_closed_terminal_does(tmp_path):
    """Walkthrough: `mmvm run | head` died of the broken pipe and left the run
    training in the SuperLink. The output now goes nowhere and the run is stopped,
    with what to resume said on stderr; no traceback, no 'Exception ignored'."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-c", READ_BY_HEAD, f"out-dir='{tmp_path}'", CHATTY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert "Successfully started run 42" in proc.stdout.readline()
    proc.stdout.close()  # head has read its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert "stopped run 42; continue it with the same --run-config" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    # `mmvm run 2>&1 | head`: the stop's own lines go to the same closed pipe
    folder = tmp_path / "run-42"
    folder.mkdir()
    (folder / "server_state.pt").write_bytes(b"a checkpoint")  # a stop is asked first
    both = subprocess.Popen(
        [sys.executable, "-c", READ_BY_HEAD, f"out-dir='{tmp_path}'", CHATTY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert "Successfully started run 42" in both.stdout.readline()
    both.stdout.close()
    assert both.wait(timeout=60) == 128 + signal.SIGPIPE


def test_a_resumes_folders_are_named_as_the_server_names_them(tmp_path):
    """resume='042' is run 42 (as Flower prints ids): Ctrl-C's stop request goes to the
    folder the ServerApp keeps that run's state in, run-42, not run-042."""
    from mmvm.cli.run_stop import run_folders

    state, results = run_folders({"resume": "042", "out-dir": str(tmp_path)}, "7")
    assert (state, results) == (tmp_path / "run-42", tmp_path / "run-7")
