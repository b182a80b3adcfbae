"""mmvm.interrupts with real signals: held while a checkpoint is written, delivered
right after as they would have been; a second one goes through at once; SIGTERM
raises like Ctrl-C; handlers are put back."""

from __future__ import annotations

import signal

import pytest

from mmvm.interrupts import Terminated, deferred_signals, sigterm_as_interrupt


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler (a pytest-xdist worker ignores SIGINT)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_signal_in_the_block_is_delivered_after_it(ctrl_c):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            signal.raise_signal(signal.SIGINT)
            done.append("written")  # would not run, were it not held
    assert done == ["written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    term = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            with deferred_signals():
                signal.raise_signal(signal.SIGTERM)
                done.append("written again")
        assert done == ["written", "written again"]
    assert signal.getsignal(signal.SIGTERM) is term


def test_a_second_signal_goes_through_at_once(ctrl_c):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            signal.raise_signal(signal.SIGINT)
            done.append("held")
            signal.raise_signal(signal.SIGINT)
            done.append("not reached")
    assert done == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_in_the_block_wins_and_no_signal_nothing_happens(ctrl_c):
    with pytest.raises(OSError, match="disk full"):
        with deferred_signals():
            signal.raise_signal(signal.SIGINT)
            raise OSError("disk full")
    with deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
