"""A malicious server against the unmask step: it tells each holder of a shared
modality a different story of who dropped (found by the attack review of 2026-12-05).

Each story alone passes the survivor count: in a group of 4 the views {A,B,C} /
{A,B,D} / {B,C,D} / {A,C,D} (each with the fourth "dropped") reveal, together, A's and
B's self-mask seeds and every pair seed of A and B with C and D: the sum of two
holders' weights, unmasked, with no site colluding. In a group of 3 two survivors
were enough. Now a view with dropped holders needs the confirm round (each survivor
commits to it and seals it to the others), a site reveals only when every other
survivor sealed it the same view, and a group keeps more than half of its holders
and at least 3. The tests play the server with the sites' own code and check that
nothing is revealed.
"""

from __future__ import annotations

import pytest

from mmvm.federation import sealed_align
from mmvm.federation.envelope_checks import route
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.messages import ConfirmRequest, UnmaskReply, UnmaskRequest
from mmvm.federation.settings import settings_for
from mmvm.secure.errors import MaskingError, SecurityError
from tests.support.federate import (
    RUN,
    federate,
    make_sites,
    params,
    restarted,
    sealed_endpoints,
    site_keys,
    split,
)
from tests.support.malicious import Recorder, hybrid_sites


class Done(Exception):
    """The attack has been played; the test reads what it got."""


class SplitViews(LocalTransport):
    """Plays window 0's unmask step itself: ``views(holders) -> {site: (survivors,
    dropped)}`` for modality m0; ``confirm``: send the confirm round first (as the
    honest server does when someone dropped), routing what the sites sealed."""

    def __init__(self, endpoints, sites, views, confirm: bool):
        super().__init__(endpoints)
        self.sites, self.views, self.confirm = sites, views, confirm
        self.answers: dict[str, object] = {}
        self.window = None

    def exchange(self, requests, wait=None, need=1):
        kind = next(iter(requests.values())).kind
        if kind not in ("confirm", "unmask"):
            out = super().exchange(requests, wait, need)
            if kind == "window":
                self.window = out
            return out
        names = {k: s.name for k, s in self.sites.items()}
        key_of = {n: k for k, n in names.items()}
        holders = sorted(s.name for s in self.sites.values() if "m0" in s.names)
        views = {n: {"m0": {"survivors": u, "dropped": d}}
                 for n, (u, d) in self.views(holders).items()}
        w = next(iter(requests.values())).window
        inbox = route({k: r.shares for k, r in self.window.items()}, names)
        sealed = {}
        if self.confirm:
            for n, g in views.items():
                sealed[key_of[n]] = self.endpoints[key_of[n]].handle(
                    ConfirmRequest(window=w, groups=g)).sealed
        confirmations = route(sealed, names) if sealed else {}
        for n, g in views.items():
            k = key_of[n]
            req = UnmaskRequest(window=w, groups=g, shares=inbox[k],
                                confirmations=confirmations.get(k, {}))
            try:
                self.answers[n] = self.endpoints[k].handle(req)
            except (SecurityError, MaskingError) as err:
                self.answers[n] = err
        raise Done


def four(h):  # every view has 3 survivors; together they unmask h[0] + h[1]
    a, b, c, d = h
    return {a: ([a, b, c], [d]), b: ([a, b, d], [c]), c: ([b, c, d], [a]),
            d: ([a, c, d], [b])}


def three(h):  # two holders told the third dropped, the third told all survived
    a, b, c = h
    return {a: ([a, b], [c]), b: ([a, b], [c]), c: ([a, b, c], [])}


@pytest.mark.parametrize("confirm", [False, True], ids=["no-confirm", "confirm"])
def test_split_views_in_a_group_of_four_reveal_nothing(cfg, tmp_path, tiny_polymnist,
                                                        confirm):
    """Without the confirm round each site refuses (no co-survivor confirmed its
    view); with it, each finds a co-survivor that confirmed another view, or none
    that names it a survivor."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    t = SplitViews(endpoints, sites, four, confirm)
    with pytest.raises(Done):
        federate(cfg, {}, transport=t, secure=True, exchange="round")
    assert len(t.answers) == 4
    revealed = [n for n, a in t.answers.items() if isinstance(a, UnmaskReply)]
    assert revealed == [], revealed
    whys = [str(a) for a in t.answers.values()]
    if not confirm:
        assert all("did not confirm that view" in w for w in whys), whys
    else:  # a co-survivor confirmed another view, or none naming this site a survivor
        assert any("was told another view" in w for w in whys), whys
        assert all("was told another view" in w or "did not confirm" in w
                   for w in whys), whys


def test_a_group_of_three_cannot_lose_a_site(cfg, tmp_path, tiny_polymnist):
    """Two survivors of three would reveal a pair's sum: the site refuses the view,
    as the honest server never sends it."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=3)
    t = SplitViews(endpoints, sites, three, confirm=False)
    with pytest.raises(Done):
        federate(cfg, {}, transport=t, secure=True, exchange="round")
    told_dropped = sorted(t.answers)[:2]
    for n in told_dropped:
        assert isinstance(t.answers[n], MaskingError), t.answers[n]
        assert "at least 3 must remain" in str(t.answers[n])
    # the third was told everyone survived: it reveals shares only, no pair seed
    third = t.answers[sorted(t.answers)[2]]
    assert isinstance(third, UnmaskReply) and third.seeds == {"m0": {}}


def test_one_view_per_window(cfg, tmp_path, tiny_polymnist):
    """A site that confirmed one view of window w answers under no other: not a
    second confirm, and not an unmask that calls everyone a survivor (its share of
    the "dropped" site's seed would join the pair seeds its co-survivors reveal)."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    first = {}

    def views(h):
        return {h[0]: (h[:3], [h[3]])}

    class Twice(SplitViews):
        def exchange(self, requests, wait=None, need=1):
            try:
                return super().exchange(requests, wait, need)
            except Done:
                first.update(self.answers)
                raise

    t = Twice(endpoints, sites, views, confirm=True)
    with pytest.raises(Done):
        federate(cfg, {}, transport=t, secure=True, exchange="round")
    (name, answer), = first.items()  # refused: its co-survivors confirmed nothing
    assert "did not confirm that view" in str(answer)
    key = next(k for k, s in sites.items() if s.name == name)
    h = sorted(s.name for s in sites.values() if "m0" in s.names)
    other = {"m0": {"survivors": [h[0], h[1], h[3]], "dropped": [h[2]]}}
    with pytest.raises(SecurityError, match="another view of \\['m0'\\]"):
        endpoints[key].handle(ConfirmRequest(window=0, groups=other))
    everyone = {"m0": {"survivors": h, "dropped": []}}  # would reveal h[3]'s share
    with pytest.raises(SecurityError, match="another view of \\['m0'\\]"):
        endpoints[key].handle(UnmaskRequest(window=0, groups=everyone))


def test_an_honest_dropout_confirms_then_averages(cfg, tmp_path, tiny_polymnist):
    """A group of 4 that loses one holder: the server sends the confirm round to the
    survivors of that window only, and the mean goes on (equal to plaintext:
    test_faults.py::test_secure_dropout_equals_plaintext_dropout)."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    away = sorted(k for k, s in sites.items() if "m0" in s.names)[0]

    class Away(Recorder):
        def exchange(self, requests, wait=None, need=1):
            r = next(iter(requests.values()))
            if r.kind == "window" and r.window == 1:
                requests = {k: v for k, v in requests.items() if k != away}
            return super().exchange(requests, wait, need)

    t = Away(endpoints)
    before = params([sites[away]])
    res = federate(cfg, {}, transport=t, secure=True, exchange="step")
    confirms = [(req, rep) for kind, req, rep in t.log if kind == "confirm"]
    assert len(confirms) == 1
    (requests, replies), = confirms
    holders = {k for k, s in sites.items() if "m0" in s.names}
    assert set(requests) == holders - {away} == set(replies)
    assert all(r.window == 1 and r.groups["m0"]["dropped"] == [sites[away].name]
               for r in requests.values())
    assert res.missed == {sites[away].name: [1]}
    assert not any(row.get("refused") for row in res.history)
    assert all(row["unaveraged"] == [] for row in res.history)  # among the survivors
    assert params([sites[away]]).keys() == before.keys()


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("after,back", [("confirm", True), ("confirm", False),
                                        ("unmask", False)])
def test_a_server_restarted_in_a_dropout_window_keeps_the_view_the_sites_took(
        cfg, tmp_path, tiny_polymnist, monkeypatch, after, back):
    """The server dies after window 1's confirm (or unmask) round, before its
    checkpoint; the resumed server asks window 1 again. The survivors committed to
    "d dropped" and answer under no other view: the resumed server keeps that view
    (the sites report it at resume), even where d answers window 1 now (the run
    failed there: 'another view than it was given before'); after the unmask, the
    repeated confirm is sealed again (it was refused, and the window not averaged)."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    sites = make_sites(cfg, specs, root)
    keys, state, ckpt = site_keys(sites), tmp_path / "state", tmp_path / "server.pt"
    away = sorted(k for k, s in sites.items() if "m0" in s.names)[0]

    class Away(Recorder):
        def __init__(self, endpoints, crash: bool):
            super().__init__(endpoints)
            self.crash = crash

        def exchange(self, requests, wait=None, need=1):
            r = next(iter(requests.values()))
            if r.kind == "window" and r.window == 1 and (self.crash or not back):
                requests = {k: v for k, v in requests.items() if k != away}
            out = super().exchange(requests, wait, need)
            if self.crash and r.kind == after and r.window == 1:
                raise Crash
            return out

    opts = {"exchange": "step", "float16": False, "secure": True, "checkpoint_every": 1}
    with pytest.raises(Crash):
        run_federation(Away(sealed_endpoints(sites, keys, state), crash=True),
                       settings_for(cfg, **opts), checkpoint=ckpt)
    sites = restarted(cfg, sites, tmp_path)
    t = Away(sealed_endpoints(sites, keys, state), crash=False)
    res = run_federation(t, settings_for(cfg, resume=RUN, **opts), checkpoint=ckpt,
                         resume_from=ckpt)
    assert [r["window"] for r in res.history] == list(range(3))  # all, 1 repeated
    assert not any(row.get("refused") for row in res.history), res.history
    unmasks = [req for kind, req, _ in t.log if kind == "unmask"
               and next(iter(req.values())).window == 1]
    assert unmasks and all(r.groups["m0"]["dropped"] == [sites[away].name]
                           for r in unmasks[0].values())


def test_a_window_that_cannot_average_a_modality_says_so(cfg, tmp_path, tiny_polymnist):
    """Two of four holders away: nothing can be unmasked (3 survivors needed), the
    holders go on from the last mean, and only the sites' logs showed it (the deployment
    walkthrough recomputed means from state files): the window line and results.json
    name the modality now."""
    from mmvm.federation.report import unaveraged, window_line

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=4)
    gone = sorted(k for k, s in sites.items() if "m0" in s.names)[:2]

    class TwoAway(Recorder):
        def exchange(self, requests, wait=None, need=1):
            r = next(iter(requests.values()))
            if r.kind == "window" and r.window == 1:
                requests = {k: v for k, v in requests.items() if k not in gone}
            return super().exchange(requests, wait, need)

    t = TwoAway(endpoints)
    res = federate(cfg, {}, transport=t, secure=True, exchange="step")
    assert [row["unaveraged"] for row in res.history][:3] == [[], ["m0"], []]
    assert not [kind for kind, req, _ in t.log if kind in ("confirm", "unmask")
                and next(iter(req.values())).window == 1]
    line = window_line(res.history[1], len(res.history), 1.0)
    assert "(m0 not averaged: too few holders answered or unmasked; its holders go on " \
           "from its last mean, or from their own weights if it has none)" in line
    assert unaveraged(res.history) == {"m0": [1]}




def eight(h):  # a and b told nobody dropped; the other six told that a and b did
    a, b, *rest = h
    return {a: (h, []), b: (h, []), **{n: (rest, [a, b]) for n in rest}}


def test_two_holders_told_nobody_dropped_in_a_group_of_eight_reveal_nothing(
        cfg, tmp_path, tiny_polymnist):
    """The attack of t - 1 colluding holders (t = 4 of 8; a view may drop two): a and
    b answered the full view unconfirmed, each revealing its share of the other's
    self-mask seed, which with the colluders' three made t; the six others revealed
    their pair seeds with a and b: a + b unmasked besides the six's sum. Where a view
    can drop two, a full view is confirmed too, and a and b find that the six sealed
    them nothing."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=8)
    t = SplitViews(endpoints, sites, eight, confirm=True)
    with pytest.raises(Done):
        federate(cfg, {}, transport=t, secure=True, exchange="round")
    h = sorted(t.answers)
    assert len(h) == 8
    for n in h[:2]:  # told nobody dropped: refused, nothing of theirs revealed
        assert isinstance(t.answers[n], SecurityError), t.answers[n]
        assert "did not confirm that view" in str(t.answers[n])
    for n in h[2:]:  # a consistent view of their own: the six's sum, as an honest run
        assert isinstance(t.answers[n], UnmaskReply), t.answers[n]
        assert sorted(t.answers[n].seeds["m0"]) == h[:2]


def crossed(h):  # each honest pair told the other pair dropped; c1, c2 in both views
    a, b, c1, c2, h1, h2 = h
    return {a: ([a, b, c1, c2], [h1, h2]), b: ([a, b, c1, c2], [h1, h2]),
            h1: ([c1, c2, h1, h2], [a, b]), h2: ([c1, c2, h1, h2], [a, b]),
            c1: ([a, b, c1, c2], [h1, h2]), c2: ([a, b, c1, c2], [h1, h2])}


def test_crossed_views_that_colluders_could_confirm_to_both_pairs_are_refused(
        cfg, tmp_path, tiny_polymnist):
    """Colluders C1 and C2 (t - 1 = 2 of 6) in both views can seal each honest pair
    the view it was told, so every honest holder found its co-survivors agreeing and
    revealed: a + b and h1 + h2 unmasked apart (found by the review of 2026-12-05).
    A view now keeps (n + t) / 2 survivors, 5 of 6: two survivor sets share t
    holders, one of them honest, and a view that drops two is refused outright."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist, shards=6)
    t = SplitViews(endpoints, sites, crossed, confirm=False)
    with pytest.raises(Done):
        federate(cfg, {}, transport=t, secure=True, exchange="round")
    assert len(t.answers) == 6
    for n, answer in t.answers.items():
        assert isinstance(answer, MaskingError), (n, answer)
        assert "only 4 survivors of 6; at least 5 must remain" in str(answer)


def test_a_group_of_eight_confirms_every_window_and_averages(cfg, tmp_path,
                                                            tiny_polymnist):
    """Nobody drops: where a view can drop two (8 holders) every window with an
    unmask has its confirm round first, and every window is averaged; in a group of
    6, which can lose one, a full view needs none."""
    for shards, confirmed in ((8, True), (6, False)):
        sites, _, endpoints = hybrid_sites(cfg, tmp_path / str(shards), tiny_polymnist,
                                           shards=shards)
        t = Recorder(endpoints)
        res = federate(cfg, {}, transport=t, secure=True, exchange="round")
        rounds = [(kind, next(iter(req.values())).window) for kind, req, _ in t.log
                  if kind in ("confirm", "unmask")]
        unmasks = [w for kind, w in rounds if kind == "unmask"]
        assert unmasks and all(row["unaveraged"] == [] for row in res.history)
        expected = [x for w in unmasks for x in ((("confirm", w),) * confirmed
                                                 + (("unmask", w),))]
        assert rounds == expected, (shards, rounds)
