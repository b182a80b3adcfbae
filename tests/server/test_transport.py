"""FlowerTransport: a run starts with exactly num-sites SuperNodes, a window goes on
without a site that is away, and failures name the site.

A fake Grid stands in for Flower here (one function under test); the real SuperLink
path is tests/federation/test_run_command.py.
"""

from __future__ import annotations

import time

import pytest
from flwr.app import Error, Message

from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import (
    EvaluateRequest,
    ResumeReply,
    ResumeRequest,
    SiteFailure,
)
from server.transport import FlowerTransport
from wire.records import to_record


class FakeGrid:
    """Reports a growing list of connected node ids, one more per call."""

    def __init__(self, arrivals: list[list[int]]) -> None:
        self.arrivals = arrivals
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        ids = self.arrivals[min(self.calls, len(self.arrivals) - 1)]
        self.calls += 1
        return ids


def test_waits_until_all_sites_connect(monkeypatch):
    monkeypatch.setattr("server.transport.time.sleep", lambda s: None)
    grid = FakeGrid([[], [7], [7, 3], [7, 3, 5]])
    nodes = FlowerTransport(grid, 3, timeout=10, connect_timeout=60).nodes()
    assert nodes == ["3", "5", "7"]
    assert grid.calls == 4


def test_too_many_supernodes_fail_at_once_naming_the_fix():
    grid = FakeGrid([[1, 2, 3]])
    with pytest.raises(FederationError) as err:  # stale_wait=0: as in a simulation
        FlowerTransport(grid, 2, timeout=10, connect_timeout=60, stale_wait=0.0).nodes()
    msg = str(err.value)
    assert "3 SuperNodes" in msg and "num-sites = 2" in msg
    assert "num-supernodes=2" in msg
    assert grid.calls == 1


def test_a_deployment_waits_for_a_supernode_that_is_gone_to_be_unlisted(monkeypatch,
                                                                         capsys):
    """A SuperNode restarted without node authentication is listed twice until its old
    node id's heartbeats lapse (Flower: up to a minute): the run starts once it is not,
    with the sites that are there; one more than that for longer fails naming it."""
    monkeypatch.setattr("server.transport.time.sleep", lambda s: None)
    grid = FakeGrid([[1, 2, 3, 4], [1, 2, 3, 4], [2, 3, 4]])
    transport = FlowerTransport(grid, 3, timeout=10, connect_timeout=0.0)
    assert transport.stale_wait > 60  # not a simulation's grid: Flower's heartbeat window
    assert transport.nodes() == ["2", "3", "4"] and grid.calls == 3
    said = capsys.readouterr().out.splitlines()  # once, as the wait begins
    assert said == ["mmvm: 4 SuperNodes are listed for num-sites = 3: waiting up to 65 s "
                    "for the ids of SuperNodes that are gone to lapse (their heartbeats)"]
    # connect-timeout counts from when the stale ids are gone: a site that was not up
    # yet gets its time (here: 50 s listed twice, then 25 s for the third to come)
    clock = _Clock()
    monkeypatch.setattr("server.transport.time", clock)
    late = FakeGrid([[1, 2, 3, 4]] * 100 + [[2, 3]] * 50 + [[2, 3, 5]])
    assert FlowerTransport(late, 3, timeout=10, connect_timeout=30).nodes() == \
        ["2", "3", "5"] and clock.now == 75.0
    with pytest.raises(FederationError, match=r"4 SuperNodes .* num-sites = 3.*\(still 4 "
                                              r"after \d+ s: a SuperNode that is gone"):
        FlowerTransport(FakeGrid([[1, 2, 3, 4]]), 3, timeout=10, connect_timeout=0.0,
                        stale_wait=0.01).nodes()


def test_missing_sites_fail_after_the_connect_timeout():
    grid = FakeGrid([[1]])
    with pytest.raises(FederationError) as err:
        FlowerTransport(grid, 3, timeout=10, connect_timeout=0.0).nodes()
    msg = str(err.value)
    assert "only 1 of the 3 sites" in msg and "connect-timeout" in msg


class ReplyingGrid:
    """Answers every message the way Flower does when a SuperNode has gone away: an
    error reply whose sender is the SuperLink's own node (1), not the site."""

    def __init__(self, code: int = 5, reason: str = "Node Unavailable") -> None:
        self.code, self.reason, self.pushed = code, reason, []

    def push_messages(self, msgs):
        for i, m in enumerate(msgs):
            m.metadata.__dict__["_message_id"] = f"msg-{i}"  # as Grid.push_messages does
            m.metadata.__dict__["_src_node_id"] = 1
        self.pushed = list(msgs)
        return [m.metadata.message_id for m in msgs]

    def pull_messages(self, ids):
        replies = []
        for m in self.pushed:
            if m.metadata.message_id in ids:
                err = Message(Error(code=self.code, reason=self.reason), reply_to=m)
                err.metadata.__dict__["_src_node_id"] = 1
                replies.append(err)
        return replies


def _identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # as a ServerApp process has it
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_site_that_went_away_is_named_not_the_superlink(monkeypatch):
    _identity(monkeypatch)
    transport = FlowerTransport(ReplyingGrid(), 1, timeout=10, connect_timeout=1)
    transport.names["7"] = "hospital-b"
    with pytest.raises(FederationError, match=r"site hospital-b failed: .*Node Unavailable"):
        transport.exchange({"7": EvaluateRequest(weights={}, collect=False)})


def test_a_window_goes_on_without_a_site_that_went_away(monkeypatch):
    _identity(monkeypatch)
    transport = FlowerTransport(ReplyingGrid(), 1, timeout=10, connect_timeout=1)
    assert transport.exchange({"7": EvaluateRequest(weights={}, collect=False)},
                              wait=5.0) == {}


def test_a_site_that_fails_a_window_is_reported_not_raised(monkeypatch):
    """A window (``wait`` set) goes on without a site that failed it: the round loop
    leaves it out (``admission.py``); any other exchange still fails the run."""
    _identity(monkeypatch)
    transport = FlowerTransport(ReplyingGrid(code=2, reason="OSError: disk full"), 1,
                                timeout=10, connect_timeout=1)
    transport.names["7"] = "hospital-b"
    got = transport.exchange({"7": EvaluateRequest(weights={}, collect=False)}, wait=5.0)
    assert got == {"7": SiteFailure("hospital-b", "OSError: disk full")}
    with pytest.raises(FederationError, match="site hospital-b failed: OSError: disk full"):
        transport.exchange({"7": EvaluateRequest(weights={}, collect=False)})


@pytest.mark.parametrize("reason", ["TamperedEnvelopeError: failed authentication",
                                    "ReplayError: round 1 again",
                                    "PolicyError: this site requires secure mode"])
def test_a_site_whose_protection_refused_a_window_fails_the_run(monkeypatch, reason):
    _identity(monkeypatch)
    transport = FlowerTransport(ReplyingGrid(code=2, reason=reason), 1, timeout=10,
                                connect_timeout=1)
    with pytest.raises(FederationError, match=f"site node 7 failed: {reason}"):
        transport.exchange({"7": EvaluateRequest(weights={}, collect=False)}, wait=5.0)


def test_every_site_that_refused_is_named_not_only_the_first(monkeypatch):
    """Two require-secure sites refuse a plaintext run: one line names both."""
    _identity(monkeypatch)
    reason = "PolicyError: this site requires secure mode"
    transport = FlowerTransport(ReplyingGrid(code=2, reason=reason), 2, timeout=10,
                                connect_timeout=1)
    transport.names.update({"7": "hospital-a", "8": "hospital-b"})
    with pytest.raises(FederationError) as err:
        transport.exchange({k: EvaluateRequest(weights={}, collect=False) for k in "78"})
    assert str(err.value) == f"evaluate: sites hospital-a, hospital-b failed: {reason}"


class LateGrid(ReplyingGrid):
    """Answers every message, with a site's reply, ``delay`` seconds after it was
    pushed: a site that first finishes the window it was in when the server went."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.start = delay, 0.0

    def push_messages(self, msgs):
        self.start = time.monotonic()
        return super().push_messages(msgs)

    def pull_messages(self, ids):
        if time.monotonic() - self.start < self.delay:
            return []
        content = to_record(ResumeReply(site="hospital-b", phase="window", window=3,
                                        unmasked=3))
        return [Message(content, reply_to=m) for m in self.pushed
                if m.metadata.message_id in ids]


def test_a_resume_waits_for_a_slow_site_while_fewer_than_min_sites_answered(monkeypatch):
    """A window leaves a site that has not answered after twice ``wait`` out; a resume
    waits for it up to reply-timeout while fewer than ``need`` answered (CI saw a
    SuperNode finish its old window for ~40 s after a SuperLink restart)."""
    _identity(monkeypatch)
    transport = FlowerTransport(LateGrid(delay=0.3), 1, timeout=10, connect_timeout=1)
    assert transport.exchange({"7": EvaluateRequest(weights={}, collect=False)},
                              wait=0.05) == {}
    transport = FlowerTransport(LateGrid(delay=0.3), 1, timeout=10, connect_timeout=1)
    got = transport.exchange({"7": ResumeRequest(run="1", window=2)}, wait=0.05, need=1)
    assert got["7"] == ResumeReply(site="hospital-b", phase="window", window=3, unmasked=3)
    transport = FlowerTransport(LateGrid(delay=0.3), 1, timeout=0.1, connect_timeout=1)
    assert transport.exchange({"7": ResumeRequest(run="1", window=2)}, wait=0.05,
                              need=1) == {}  # reply-timeout still bounds it


def test_a_sites_error_text_is_shown_readable_and_bounded():
    """Flower wraps a ClientApp's error as "<class '...'>:<'...'>"; the server shows
    "Class: message", and cuts a flood (a site's text is not the server's to trust)."""
    from mmvm.federation.site_errors import REASON_CHARS, site_reason

    assert site_reason("<class 'mmvm.data.store.DataError'>:<'bad row 3'>") == \
        "DataError: bad row 3"
    long = site_reason("x" * (REASON_CHARS + 500))
    assert long.endswith("... (2,500 characters, cut)") and len(long) == REASON_CHARS


RAY_REASON = """<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::\
ClientAppActor.run()\x1b[39m (pid=20255, ip=192.0.2.2, actor_id=39f3)
                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/client/app.py", line 27, in _answer
    reply = forward(kind, msg.content, context, sites)
  File "/work/main/client/hosts.py", line 53, in forward
    return ray.get(host.answer.remote(kind, content, context))
ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.
\tclass_name: SiteHost
The actor is dead because its worker process has died.

The above exception was the direct cause of the following exception:

ray::ClientAppActor.run() (pid=20255, ip=192.0.2.2, actor_id=39f3)
  File "/flwr/simulation/ray_transport/ray_actor.py", line 65, in run
    raise ClientAppException(str(ex)) from ex
flwr.clientapp.client_app.ClientAppException:
Exception ClientAppException occurred. Message: The actor died unexpectedly.'>"""


def test_a_traceback_from_a_ray_worker_is_shown_as_its_cause():
    """A ClientApp that raised in a simulation's Ray worker: Flower's reason is the
    whole coloured chain of tracebacks (60 lines); the window line and results.json
    kept its first 300 characters, the exception's class and Ray's frame markers.
    Shown: the first exception (the cause) and the frame that raised it."""
    from mmvm.federation.site_errors import site_reason

    assert site_reason(RAY_REASON) == ("ActorDiedError: The actor died unexpectedly "
                                       "before finishing this task. (hosts.py:53 in forward)")
    # a traceback without an exception line is kept as text (bounded, printable)
    odd = site_reason('Traceback (most recent call last):\n  File "x.py", line 1, in f')
    assert odd.startswith("Traceback") and "\x1b" not in odd


def test_a_traceback_raised_during_handling_is_shown_as_its_last_exception():
    from mmvm.federation.site_errors import site_reason

    tb = ('Traceback (most recent call last):\n  File "a.py", line 3, in f\n'
          '    lastError: int = 0\nKeyError: \'x\'\n\nDuring handling of the above '
          'exception, another exception occurred:\n\nTraceback (most recent call last):'
          '\n  File "b.py", line 9, in g\nMemoryError\n')
    assert site_reason(tb) == "MemoryError (b.py:9 in g)"


def test_a_window_waits_site_timeout_even_above_reply_timeout(monkeypatch):
    """A user raised site-timeout to 1800 s for a slow hospital: the window's wait and
    its messages' lifetime were cut at reply-timeout (900 s), and the note that
    says a window waited its whole site-timeout never came."""
    from mmvm.federation.messages import WindowRequest
    from server import transport as flower_transport

    _identity(monkeypatch)
    seen = {}

    def collect(grid, ids, timeout, soft, need, **kw):
        seen.update(timeout=timeout, soft=soft)
        return []

    monkeypatch.setattr(flower_transport, "_collect", collect)
    grid = ReplyingGrid()
    transport = FlowerTransport(grid, 1, timeout=900, connect_timeout=1)
    transport.exchange({"7": WindowRequest(window=0)}, wait=1800.0)
    assert seen == {"timeout": 3600.0, "soft": 1800.0}
    assert grid.pushed[-1].metadata.ttl == 3600.0
    # the evaluation (its wait is reply-timeout) stays bounded by reply-timeout
    transport.exchange({"7": EvaluateRequest(weights={}, collect=False)}, wait=900.0)
    assert seen == {"timeout": 900.0, "soft": 900.0}


class _Clock:
    """time.monotonic and time.sleep of server.transport, on a counter: sleeping
    moves it, nothing else does."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class _ClockedLateGrid(LateGrid):
    def __init__(self, clock: _Clock, delay: float) -> None:
        super().__init__(delay)
        self.clock = clock
        self.pulls = 0

    def push_messages(self, msgs):
        ids = ReplyingGrid.push_messages(self, msgs)
        self.start = self.clock.now
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        if self.clock.now - self.start < self.delay:
            return []
        return [Message(to_record(ResumeReply(site="b", phase="window", window=3,
                                              unmasked=3)), reply_to=m)
                for m in self.pushed if m.metadata.message_id in ids]


@pytest.mark.parametrize("poll, first, pulls", [
    (None, 0.02, (120, 128)),  # a deployment's grid: 20 ms, 0.1 s after 2 s
    (0.1, 0.1, (40, 41)),  # run config reply-poll = 0.1: 0.1 s throughout
    (0.5, 0.5, (9, 9)),  # slower than the back-off's cap: not sped up after 2 s
])
def test_reply_poll_sets_how_often_the_superlink_is_asked(monkeypatch, poll, first, pulls):
    """Each poll is a request the SuperLink serves: ``reply-poll`` (run config) trades
    a window's last reply being seen up to that much later for fewer requests."""
    _identity(monkeypatch)
    clock = _Clock()
    monkeypatch.setattr("server.transport.time", clock)
    grid = _ClockedLateGrid(clock, delay=4.0)
    got = FlowerTransport(grid, 1, timeout=10, connect_timeout=1, poll=poll).exchange(
        {"7": ResumeRequest(run="1", window=2)})
    assert got["7"].site == "b" and 4.0 <= clock.now < 4.0 + max(first, 0.1) + 1e-9
    assert clock.sleeps[0] == first and max(clock.sleeps) == max(first, 0.1)
    assert pulls[0] <= grid.pulls <= pulls[1], grid.pulls


def test_a_long_wait_names_the_sites_it_is_for_every_half_minute(monkeypatch, capsys):
    """A site's first message may decode its files, its final evaluation train its
    judges: minutes in which the console said nothing (a user took it for a hang).
    Every NOTE_EVERY seconds a line names the sites still awaited."""
    from server.transport import NOTE_EVERY

    _identity(monkeypatch)
    clock = _Clock()
    monkeypatch.setattr("server.transport.time", clock)
    grid = _ClockedLateGrid(clock, delay=2.5 * NOTE_EVERY)
    transport = FlowerTransport(grid, 1, timeout=900, connect_timeout=1)
    transport.names["7"] = "hospital-b"
    got = transport.exchange({"7": ResumeRequest(run="1", window=2)})
    assert got["7"].site == "b" and clock.now >= 2.5 * NOTE_EVERY
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "waiting for" in ln]
    assert lines == [f"mmvm: resume: waiting for site hospital-b ({s:.0f} s; it waits "
                     f"up to 900 s)" for s in (NOTE_EVERY, 2 * NOTE_EVERY)], lines


def test_a_window_past_its_wait_says_the_longer_wait_for_a_quorum(monkeypatch, capsys):
    """Past site-timeout a window waits on (up to twice it) while fewer than min-sites
    answered: the line says that limit, not the one already passed."""
    from mmvm.federation.messages import WindowRequest
    from server import transport as flower_transport

    _identity(monkeypatch)
    clock = _Clock()
    monkeypatch.setattr("server.transport.time", clock)
    said = []

    def collect(grid, ids, timeout, soft, need, note=None, **kw):
        for t in (30.0, 45.0):
            note(set(ids), t)
        said.append((timeout, soft))
        return []

    monkeypatch.setattr(flower_transport, "_collect", collect)
    transport = FlowerTransport(ReplyingGrid(), 2, timeout=900, connect_timeout=1)
    transport.names.update({"7": "a", "8": "b"})
    transport.exchange({"7": WindowRequest(window=3), "8": WindowRequest(window=3)},
                       wait=40.0, need=1)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "waiting" in ln]
    # window index 3 is the progress lines' "window 4/..." (a walkthrough read "window
    # 3: waiting" beside "window 4/10 ... (without b)")
    assert lines == ["mmvm: window 4: waiting for sites a, b (30 s; it waits up to 40 s)",
                     "mmvm: window 4: waiting for sites a, b (45 s; it waits up to 80 s)"]
