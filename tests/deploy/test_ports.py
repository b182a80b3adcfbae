"""The ports the test and benchmark processes take: any free one, or only a given
range (``MMVM_TEST_PORTS``) on a shared machine or behind a firewall."""

from __future__ import annotations

import socket

import pytest

from tests.support import processes


def test_a_port_range_confines_the_ports_and_skips_taken_ones(monkeypatch):
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
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
