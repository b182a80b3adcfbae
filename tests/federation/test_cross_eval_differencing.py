"""A plaintext server that chooses the rows and values a site scores, against the
cross-site evaluation's floors (security reviews of 2026-12-05): differences of two
scores must not isolate one sample's score, whatever the server sends; min-rows and
the small cells it leaves out are tested here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.federation.channel import PlainChannel
from mmvm.federation.cross_eval import combine
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.messages import SERVER, EvaluateRequest, HeldOutRequest
from mmvm.federation.policy import SitePolicy
from mmvm.federation.posteriors import Posteriors, encode_table


@pytest.fixture
def site(site_before_eval):
    """site-m0 before its evaluation (the federation conftest's)."""
    return site_before_eval


def _post(site, rows, values=None):
    d = site.cfg.model.latent_dim
    z = np.zeros((len(rows), d), np.float32) if values is None else values
    return Posteriors(np.asarray(rows, np.int64), z, np.zeros_like(z))


def _one_nll(site, row: int, z: torch.Tensor) -> float:
    """Test row ``row``'s reconstruction NLL of m0 from the code ``z`` [1, d]."""
    from mmvm.data import open_dataset

    x = open_dataset(site.test_path, site.names, site.cfg.data).batch(
        torch.as_tensor([row]))["x"]["m0"]
    with torch.no_grad():
        return -float(site.model.specs["m0"].weight) * float(
            site.model.log_likelihood("m0", x, site.model.decode("m0", z))[0])


def test_a_plaintext_server_reads_one_samples_nll_from_scores_that_differ_by_a_row(site):
    """Security review (second one): the server gives m1's table the rows R (more
    than a quarter of the test rows) and m2's R and one more row r. Each score passes
    the floor, but 2 x rest - (m1 -> m0) - (m2 -> m0), as sums, is r's imputation
    NLL. With min-rows at its default, 1, that difference is readable (documented);
    a node config that raises it scores nothing cross-site in plaintext (below)."""
    d, rows = site.cfg.model.latent_dim, np.arange(40)
    table = {SERVER: encode_table({"m1": _post(site, rows),
                                   "m2": _post(site, np.append(rows, 60))})}
    ep = Endpoint(site, PlainChannel(), SitePolicy(eval_labels=(), min_rows=1))
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=table, draw=False)).metrics
    single = 2 * got["impute_rest/m0"] * 41 - got["impute/m1->m0"] * 40 \
        - got["impute/m2->m0"] * 41
    assert single == pytest.approx(_one_nll(site, 60, torch.zeros(1, d)), rel=1e-3)


@pytest.mark.parametrize("attack", ["rows", "values"])
def test_a_plaintext_site_with_min_rows_scores_nothing_the_server_could_difference(
        site, attack):
    """Security review (third one): min-rows withheld scores whose row sets differ by
    a few rows, but the server also chooses the values: m1 and m2 over the same 96
    rows, equal but at row 60, give two means whose difference times 96 is row 60's
    NLL from two codes of the server's choosing (and a bit of its label from two
    coherences), and plaintext runs can be compared with each other by their ids. A
    deployed plaintext site whose node config raises min-rows scores nothing
    cross-site, says why in its log, and tells the server that it withheld them."""
    d, every = site.cfg.model.latent_dim, np.arange(96)
    if attack == "rows":
        m1, m2 = _post(site, every[:40]), _post(site, every[:41])
    else:
        other = np.zeros((96, d), np.float32)
        other[60] = 2.0
        m1, m2 = _post(site, every), _post(site, every, other)
    table = {SERVER: encode_table({"m1": m1, "m2": m2})}
    ep = Endpoint(site, PlainChannel(), SitePolicy(eval_labels=(), min_rows=5))
    ep.handle(HeldOutRequest())
    got = ep.handle(EvaluateRequest(posteriors=table, draw=False)).metrics
    assert not [k for k in got if k.startswith("impute") or "m1->" in k], got
    assert got["cross_withheld"] == 1.0 and "recon_nll/m0" in got  # its own: scored
    said = " ".join(ep.notes)
    assert "min-rows = 5" in said and "server chooses them in a plaintext run" in said
    notes = {}
    combine({"k": {**got, "site": "site-m0"}}, ["m0", "m1", "m2"], {"k": ["m0"]},
            type("T", (), {"notes": notes, "rows": {}, "available": {}})(), False)
    assert "its min-rows is above 1" in notes["site-m0"]


def test_a_site_that_does_not_share_is_not_said_to_withhold_for_min_rows(site):
    """share-test = false is the reason the server is told (it gets no heldout
    answer); the min-rows note would name the wrong one."""
    ep = Endpoint(site, PlainChannel(), SitePolicy(share_test=False, min_rows=5))
    got = ep.handle(EvaluateRequest(posteriors={SERVER: encode_table({"m1": _post(site, np.arange(96))})})).metrics
    assert "cross_withheld" not in got
    assert not any(k.startswith(("impute", "coherence")) for k in got)


def test_where_values_cannot_be_chosen_min_rows_leaves_out_rows_differences_isolate(
        site):
    """The sealed path (a secure run: peers' posteriors, the server cannot change
    them) scores through evaluate_site with the node config's policy. The server's
    rows R for m1 and R plus row 60 for m2 let 2 x rest - the two pairs, as sums,
    read row 60's NLL (the plaintext test above); with min-rows = 5 row 60 is left
    out of every score, end to end: the scores are those of tables without it, and
    that difference is 0."""
    from mmvm.federation.site_eval import evaluate_site

    rows, policy, said = np.arange(40), SitePolicy(eval_labels=(), min_rows=5), []

    def scores(m2_rows, log=said.append):
        blob = encode_table({"m1": _post(site, rows), "m2": _post(site, m2_rows)})
        return evaluate_site(site, cross=blob, draw=False, log=log, policy=policy)

    got, without = scores(np.append(rows, 60)), scores(rows, log=lambda _: None)
    impute = {k: v for k, v in got.items() if k.startswith("impute")}
    assert impute == {k: v for k, v in without.items() if k.startswith("impute")}
    assert impute["impute/m2->m0_n"] == impute["impute_rest/m0_n"] == 40
    assert 2 * impute["impute_rest/m0"] * 40 - impute["impute/m1->m0"] * 40 \
        - impute["impute/m2->m0"] * 40 == pytest.approx(0.0, abs=1e-6)
    assert got["cross_rows_left_out"] == 1.0 and "cross_rows_left_out" not in without
    assert "1 test rows left out" in " ".join(said) and "min-rows = 5" in " ".join(said)
    notes = {}
    combine({"k": {**got, "site": "site-m0"}}, ["m0", "m1", "m2"], {"k": ["m0"]},
            type("T", (), {"notes": notes, "rows": {}, "available": {}})(), False)
    assert "single out" in notes["site-m0"]


def _support_sizes(sets: list[set], coefficients) -> set[int]:
    """How many rows each combination sum_k c_k 1[S_k] is non-zero on."""
    rows = sorted(set().union(*sets))
    return {sum(1 for r in rows if sum(c * (r in s) for c, s in zip(cs, sets,
                                                                     strict=True)))
            for cs in coefficients}


def test_small_cells_leave_no_combination_of_scores_over_fewer_rows_than_the_floor():
    """Every combination of the scores' sums, with coefficients -2..2, of random row
    sets is over 0 or at least `floor` rows once the small cells are left out (the
    pairwise rule this replaced passed S1 = S2 + S3 + one row, S2 and S3 apart)."""
    import itertools

    from mmvm.federation.site_cross_eval import small_cells

    r = np.arange
    three = {"a": r(0, 41), "b": r(0, 20), "c": r(21, 41)}  # a - b - c = row 20
    assert small_cells(three, 5).tolist() == [20]
    assert _support_sizes([set(v.tolist()) for v in three.values()],
                          [(1, -1, -1)]) == {1}  # what it closes
    gen = np.random.default_rng(0)
    for trial in range(30):
        floor = int(gen.integers(2, 6))
        sets = {k: np.flatnonzero(gen.random(60) < gen.uniform(0.2, 0.9))
                for k in "abcd"}
        out = set(small_cells(sets, floor).tolist())
        kept = [set(v.tolist()) - out for v in sets.values()]
        sizes = _support_sizes(kept, itertools.product(range(-2, 3), repeat=4))
        assert min(sizes - {0}, default=floor) >= floor, (trial, floor, sorted(sizes))
        # only rows of small cells go: every row left out was in one
        cells = [tuple(x in v for v in sets.values()) for x in range(60)]
        for row in out:
            assert cells.count(cells[row]) < floor


def test_small_cells_leave_out_nothing_where_no_modality_is_missing_or_floor_is_1():
    from mmvm.federation.site_cross_eval import small_cells

    r = np.arange
    assert small_cells({"a": r(40), "b": r(40), "c": r(40)}, 5).size == 0
    assert small_cells({"a": r(40), "b": r(41)}, 1).size == 0
    assert small_cells({"a": r(40), "b": r(45)}, 5).size == 0  # a cell of 5 rows
    assert small_cells({"a": r(40), "b": r(44)}, 5).tolist() == [40, 41, 42, 43]
    assert small_cells({}, 5).size == 0
