"""A malicious server against what a site trains on: the "mean" of a shared
modality's weights that it sends with each window.

The server chooses those weights, so a crafted mean makes the window's outcome a
function of the site's rows (a loss that goes non-finite only if some row's pixel
passes a threshold). A review read a secure site's pixels, one bit per retry, from
which error a window failed with, sending the same window again and again. Each
test plays the server; the site must refuse before it trains, or answer in a way
that says nothing of its rows. A secure site refuses a mean whose sketch is not its
own rows of it (tests/federation/test_mean_sketches.py); the tests here play a server
that colludes with a co-holder, so it can forge those rows, and show the defences
behind that check.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmvm.federation.endpoint import WorkFailedError
from mmvm.federation.local import LocalTransport
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.site_errors import public_error
from mmvm.federation.site_store import SiteStore
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys
from mmvm.secure.session import SiteSecrets
from tests.support.federate import federate, make_sites, plain_endpoints, split
from tests.support.malicious import forged, hybrid_sites


class Stop(Exception):
    """The test's server has seen what it came for."""


def _filled(weights: dict, value: float) -> dict:
    return {m: {n: np.full_like(a, value) for n, a in arrays.items()}
            for m, arrays in weights.items()}


def _cast(weights: dict, dtype: str) -> dict:
    return {m: {n: a.astype(dtype) for n, a in arrays.items()} for m, arrays in weights.items()}


def test_a_window_is_trained_on_one_mean_and_its_failure_says_nothing(cfg, tmp_path,
                                                                      tiny_polymnist):
    """At a holder's window 1 the server sends weights for a modality it does not
    share, a mean beyond the fixed-point range and one of a dtype torch does not take
    (float128, big-endian; all refused, nothing recorded),
    then one that makes training fail (one outcome, whatever failed), then another
    mean, or the same one with a peer's posteriors left out (refused before
    training: no second query); the first request again is a retry and is taken."""
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = next(k for k, s in sites.items() if "m0" in s.names)
    seen: list[tuple[str, BaseException | None]] = []

    class Prober(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "window" and r.window == 1:
                peer = sorted(r.posteriors)[0]
                point = self.endpoints[victim]
                crafted = forged(point, _filled(r.weights, 4000.0))
                for what, probe in (
                        ("stray", dataclasses.replace(r, weights={**crafted, "zz": {}})),
                        ("beyond", dataclasses.replace(r, weights=forged(
                            point, _filled(r.weights, 5e3)))),
                        ("float128", dataclasses.replace(r, weights=_cast(crafted, "g"))),
                        ("big-endian", dataclasses.replace(r, weights=_cast(crafted, ">f4"))),
                        ("crafted", dataclasses.replace(r, weights=crafted)),
                        ("another", dataclasses.replace(r, weights=forged(
                            point, _filled(r.weights, 3999.0)))),
                        ("absent", dataclasses.replace(r, weights=crafted, absent=[peer])),
                        ("resumed", dataclasses.replace(r, weights=crafted)),
                        ("again", dataclasses.replace(r, weights=crafted))):
                    site = self.endpoints[victim].site
                    kept = site.cfg
                    if what == "resumed":  # a run resuming this one, with its own `set`
                        site.cfg = dataclasses.replace(kept, train=dataclasses.replace(
                            kept.train, lr=kept.train.lr * 2))
                    try:
                        self.endpoints[victim].handle(probe)
                        seen.append((what, None))
                    except Exception as err:  # noqa: BLE001 - what the server learns
                        seen.append((what, err))
                    site.cfg = kept
                raise Stop
            return super().exchange(requests, wait, need)

    with pytest.raises(Stop):
        federate(cfg, {}, transport=Prober(endpoints), secure=True, exchange="step")
    got = dict(seen)
    assert "weights for ['zz'], which it does not share" in str(got["stray"])  # no record
    assert isinstance(got["beyond"], SecurityError)
    # torch takes neither: the window failed after its inputs were recorded, and no
    # later mean was taken for it
    if np.dtype("g").itemsize > 8:  # a long double wider than float64 (x86-64 Linux)
        assert "is <f16, not float16, float32 or float64 in native order" in str(
            got["float128"])
    assert "is >f4, not float16, float32 or float64" in str(got["big-endian"])
    assert "beyond the fixed-point range 4096" in str(got["beyond"])
    for what in ("crafted", "again"):  # the same mean twice: both trained, both failed
        assert type(got[what]) is WorkFailedError, got[what]
        assert str(got[what]) == f"site {sites[victim].name}: window 1 failed in " \
                                 f"training (its log says why)"
        assert got[what].__cause__ is not None  # the cause: in the site's log only
    # another mean (its rows forged: refused as another of the window the site took);
    # or the same with a peer left out
    assert "took another mean of that window already" in str(got["another"])
    assert isinstance(got["absent"], SecurityError)
    assert "window 1 was sent before with other inputs" in str(got["absent"])
    # under another config (a run that resumes this one brings its own `set`):
    # refused before any window input is read
    assert "this run began under another experiment config" in str(got["resumed"])
    # what a deployed site answers the server: the code, not the cause's class
    said = str(public_error(sites[victim].name, tmp_path / "log", "window", got["crafted"]))
    assert said.startswith("WorkFailedError in window at site ")
    assert "Diverged" not in said and "Masking" not in said and "nan" not in said
    assert "TrainingDivergedError" in (tmp_path / "log").read_text() or \
        "MaskingError" in (tmp_path / "log").read_text()


def test_the_final_evaluation_is_the_last_window_of_one_mean(cfg, tmp_path,
                                                             tiny_polymnist, monkeypatch):
    """The evaluation loads the server's mean too, and its metrics go back in clear:
    it fails with one outcome (here its scoring raises, quoting a value), another
    mean after that is refused, and the same one again is answered."""
    import mmvm.federation.endpoint as endpoint

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = next(k for k, s in sites.items() if "m0" in s.names)
    seen: dict[str, object] = {}
    scoring = endpoint.evaluate_site

    def leaky(*args, **kwargs):
        raise ValueError("pixel 17 of row 3 is 246")

    class Prober(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "evaluate":
                monkeypatch.setattr(endpoint, "evaluate_site", leaky)
                another = forged(self.endpoints[victim], _filled(r.weights, 0.5))
                for what, weights in (("first", r.weights), ("another", another)):
                    try:
                        self.endpoints[victim].handle(dataclasses.replace(r, weights=weights))
                    except Exception as err:  # noqa: BLE001 - what the server learns
                        seen[what] = err
                monkeypatch.setattr(endpoint, "evaluate_site", scoring)
                seen["again"] = self.endpoints[victim].handle(r)
                raise Stop
            return super().exchange(requests, wait, need)

    with pytest.raises(Stop):
        federate(cfg, {}, transport=Prober(endpoints), secure=True, exchange="round")
    assert type(seen["first"]) is WorkFailedError and "246" not in str(seen["first"])
    assert "its evaluation failed" in str(seen["first"])
    assert "took another mean of that window already" in str(seen["another"])
    assert seen["again"].metrics  # the same mean: answered


def test_the_window_a_site_began_is_kept_on_disk(tmp_path):
    """The record is written before training, so a new process of the site (after a
    failure, the next message rereads the state) still refuses a second mean for
    that window, and any window before it."""
    keys = {n: SiteKeys.generate(n) for n in ("a", "b")}
    directory = {n: k.public for n, k in keys.items()}

    def session() -> SiteSecrets:
        return SiteSecrets(keys["a"], directory, "7", tmp_path / "run-7")

    session().begin_window(4, "mean-x")
    again = session()  # a fresh process
    again.begin_window(4, "mean-x")  # the same mean: a retry
    for window, mean, said in ((4, "mean-y", "window 4 was sent before with other"),
                               (3, "mean-x", "window 3 comes after window 4 began")):
        with pytest.raises(SecurityError, match=said):
            session().begin_window(window, mean)
    session().begin_window(5, "mean-z")  # the run goes on
    assert session().began == {"window": 5, "inputs": "mean-z", "what": "window 5"}


@pytest.mark.parametrize("policy, says", [
    (SitePolicy(allow_collect=False), r"keeps its weights \(allow-collect = false\), and "
                                      r"this plaintext run would send those of {m} to the "
                                      r"server in clear"),
    # the server's "mean" is the encoder the site then sends its samples' posteriors
    # of: the pinned experiment would not hold (security review of 2026-12-06)
    # (in process no message checks the digest itself: client/site_node.py does)
    (SitePolicy(experiments=("0" * 64,)), r"pins the experiment \(experiment=\), and in "
                                          r"this plaintext run the server alone chooses "
                                          r"the weights of {m}"),
    (None, r"the server puts modality '{m}' in the group \['ghost-site', 'site-m0'\]; its "
           r"node config's holders= lists \['site-m0'\]"),
], ids=["allow-collect-off", "experiment-pinned", "holders"])
def test_a_plaintext_site_refuses_a_ghost_holder_its_policy_rules_out(
        cfg, tmp_path, tiny_polymnist, policy, says):
    """Without keys a site cannot tell a real holder from a name the server made up:
    told that a modality only it has is shared with "ghost-site", it would send that
    modality's weights in clear every window and load the "mean" the server sends.
    With allow-collect off, with a pinned experiment (the mean would be an encoder of
    the server's choosing), or with holders= saying who holds it, the site refuses
    before it trains or sends anything."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = plain_endpoints(sites)
    victim = next(iter(sites))
    mine = sites[victim].names[0]
    name = sites[victim].name
    endpoints[victim].policy = policy or SitePolicy(holders={mine: frozenset({name})})

    class Ghost(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "attach":
                requests[victim] = dataclasses.replace(
                    r, shared={mine: sorted([sites[victim].name, "ghost-site"])})
            return super().exchange(requests, wait, need)

    with pytest.raises(PolicyError, match=says.format(m=mine)):
        federate(cfg, {}, transport=Ghost(endpoints), exchange="step")
    assert sites[victim].link is None  # nothing attached, nothing trained
    keep = endpoints[victim].policy
    keep.check_sharing(name, {}, secure=False)  # a vertical plaintext run shares nothing
    if policy is not None:  # masked: the server sees no one's weights, nor chooses alone
        keep.check_sharing(name, {mine: [name, "b", "c"]}, secure=True)


def test_require_psi_refuses_plaintext_runs_which_send_ids_in_clear():
    policy = SitePolicy(keys="k", require_psi=True, require_secure=False)
    with pytest.raises(PolicyError, match=r"requires PSI alignment \(require-psi\); this "
                                          r"run has secure = false, which sends sample ids"):
        policy.check_run("a", secure=False, align="psi")
    with pytest.raises(PolicyError, match="this run aligns by 'pseudonym'"):
        policy.check_run("a", secure=True, align="pseudonym")
    policy.check_run("a", secure=True, align="psi")


def test_a_kept_window_reply_sent_again_withholds_the_losses_the_site_now_keeps(
        cfg, tmp_path, tiny_polymnist):
    """A review: a window answered with its loss sums, report-losses turned off in the
    node config, and a resumed server's identical request got the kept reply with
    them. Sent again now, its sums are withheld; the rest is the same reply."""
    from tests.support.federate import Spoiler

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    endpoints = plain_endpoints(sites)
    spy = Spoiler(endpoints)
    res = federate(cfg, {}, spy, exchange="step")
    last = len(res.history) - 1
    first = spy.replies[last, "n0"]
    assert first.metrics["rec_nll"] > 0 and "losses_withheld" not in first.metrics
    endpoints["n0"].policy = SitePolicy(report_losses=False)
    again = endpoints["n0"].window(spy.requests[last, "n0"])
    assert again.metrics["losses_withheld"] == 1.0
    assert again.metrics["rec_nll"] == again.metrics["reg"] == 0.0
    assert again.metrics["rows"] == first.metrics["rows"]
    assert again.posteriors == first.posteriors and again.weights is first.weights


def test_a_site_that_keeps_its_losses_sends_row_counts_only(cfg, tmp_path, tiny_polymnist):
    """report-losses = false: the loss sums of every window and the test NLL of the
    evaluation stay at the site (a crafted mean then reads only whether a window
    failed). The server's loss curve counts the site as away: the window's NLL is
    estimated from the other holders of its modalities."""
    from tests.support.malicious import Recorder

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    victim = next(k for k, s in sites.items() if "m0" in s.names)
    endpoints[victim].policy = SitePolicy(report_losses=False)
    live = tmp_path / "live" / f"{sites[victim].name}.pt"
    endpoints[victim].store = SiteStore(live)  # where a deployed site keeps its state
    seen = Recorder(endpoints)
    res = federate(cfg, {}, transport=seen, secure=True, exchange="round")
    windows = [replies[victim] for kind, _, replies in seen.log if kind == "window"]
    assert windows and all(r.metrics["losses_withheld"] == 1.0 for r in windows)
    for r in windows:
        assert r.metrics["rows"] > 0 and r.metrics["train_s"] > 0
        assert {v for k, v in r.metrics.items() if k.startswith(("rec_nll", "reg"))} == {0.0}
    others = [replies[k] for kind, _, replies in seen.log if kind == "window"
              for k in replies if k != victim]
    assert all("losses_withheld" not in r.metrics for r in others)
    assert all(row["estimated"] == 1 and np.isfinite(row["rec_nll"]) for row in res.history)
    # the site's own view: the sums it kept, one line per window, for its eyes only
    kept = (live.parent / f"{live.stem}.losses.csv").read_text().splitlines()
    assert kept[0].startswith("window,rows,rec_nll,reg,rec_nll.m0")
    assert len(kept) == 1 + len(windows) and all(float(line.split(",")[2]) > 0
                                                 for line in kept[1:])
    assert (live.parent / f"{live.stem}.losses.csv").stat().st_mode & 0o777 == 0o600
    mine = res.evaluation[victim]
    assert mine["losses_withheld"] == 1.0 and not any(k.startswith("recon_nll/") for k in mine)
    assert "n_test" not in mine  # nor the size of its test set
    assert not any(k.startswith("probe_n/") for k in mine)  # nor its labelled rows'
    assert any(k.startswith("probe_n/") for k in res.evaluation[next(
        k for k in sites if k != victim)])
    assert any(k.startswith("recon_nll/") for k in res.evaluation[next(
        k for k in sites if k != victim)])
