"""One process at a time answers for a site from its state folder (flock)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmvm.federation.state_lock import StateBusyError, state_lock

HOLD = """
import sys, time
from mmvm.federation.state_lock import state_lock
with state_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX")
def test_a_second_process_is_refused_while_one_answers_and_admitted_once_it_dies(tmp_path):
    path = tmp_path / "site-a.lock"
    proc = _holder(path)
    try:
        with pytest.raises(StateBusyError, match="another process has been answering"):
            with state_lock(path, wait=0.3):
                pass
    finally:
        proc.kill()  # however the holder ends, the kernel releases its lock
        proc.wait()
    entered = []
    with state_lock(path, wait=5):
        entered.append(True)
    assert entered and (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX")
def test_a_waiting_process_gets_the_lock_when_the_holder_finishes(tmp_path):
    path = tmp_path / "site-a.lock"
    proc = _holder(path)
    killer = subprocess.Popen([sys.executable, "-c",
                               f"import os, time; time.sleep(0.5); os.kill({proc.pid}, 9)"])
    try:
        with state_lock(path, wait=30):
            assert proc.wait(timeout=30) == -9  # entered only after the holder ended
    finally:
        killer.wait()
        proc.kill()
        proc.wait()


def test_locks_of_different_sites_do_not_block_each_other(tmp_path):
    entered = []
    with state_lock(tmp_path / "a.lock"), state_lock(tmp_path / "b.lock", wait=0):
        entered.append("both")  # no StateBusyError: b's lock is not a's
    with state_lock(tmp_path / "a.lock", wait=0):  # and a's was released on exit
        entered.append("again")
    assert entered == ["both", "again"]
