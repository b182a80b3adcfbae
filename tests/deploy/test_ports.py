"""The ports the test and benchmark processes take: any free one, or only a given
range (``MMVM_TEST_PORTS``) on a shared machine or behind a firewall."""

from __future__ import annotations

import socket

import pytest

from tests.support import processes


def test_a_port_range_confines_the_ports_and_skips_taken_ones(monkeypatch):
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # one process
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setenv(processes.PORT_RANGE, f"{taken}-{taken + 1}")
        got = processes.free_port()
        if got != taken + 1:  # taken + 1 was in use by someone else
            pytest.skip(f"port {taken + 1} is busy on this machine")
        with pytest.raises(RuntimeError, match="no free port left in the range"):
            processes.free_port()  # taken is bound, taken + 1 handed out
    monkeypatch.setenv(processes.PORT_RANGE, "19500")
    with pytest.raises(ValueError, match="expected lo-hi"):
        processes.free_port()


@pytest.mark.parametrize("count, ranges", [
    ("2", [range(19500, 19550), range(19550, 19600)]),
    ("3", [range(19500, 19533), range(19533, 19566), range(19566, 19600)]),
    ("", [range(19500, 19600)]),
])
def test_pytest_workers_take_apart_slices_of_the_range(monkeypatch, count, ranges):
    """Two workers scanning one range handed out the same port before either bound
    it (each remembers only its own): each scans its own slice now, the last one up
    to the end of the range."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
    for index, want in enumerate(ranges):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        assert processes._share(19500, 19599) == want
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "200")  # more workers than ports
    assert processes._share(19500, 19599) == range(19500, 19600)
