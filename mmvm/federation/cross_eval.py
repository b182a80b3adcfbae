"""The server's part of the cross-site evaluation (plaintext runs; the sites' part and
what they score: :mod:`mmvm.federation.site_cross_eval`; a secure run's alignment and
routing: :mod:`mmvm.federation.sealed_test_routing`, combined here too).

Before the final evaluation every site answers a ``heldout`` message with its test
samples' ids and its own modalities' posteriors of them. The server aligns the ids
(sorted union, as training's), gives each site in its evaluate message the other
modalities' posteriors of the test samples it holds (rows: positions in the ids it
sent), and combines the per-site means into eval.json-shaped ``imputation`` and
``coherence`` sections (weighted by the sites' counts: a modality held by several
sites is scored on each one's samples). A site that sent nothing (no test file, its
node config's ``share-test = false``, a failure) is named in ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmvm.data.store_format import MAX_ID_CHARS
from mmvm.federation.admission import short_reason
from mmvm.federation.coordinator import Coordinator
from mmvm.federation.messages import SERVER, HeldOutReply, HeldOutRequest
from mmvm.federation.posteriors import (
    PosteriorError,
    Posteriors,
    decode_table,
    encode_table,
    merge_tables,
    select_rows,
)
from mmvm.federation.window_metrics import WITHHELD
from mmvm.imputation import scoring


@dataclass
class TestTables:
    """The sites' test posteriors, aligned: ``rows[key]`` the aligned row of each id a
    site sent (in its order), ``table`` every modality's rows."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)
    table: dict[str, Posteriors] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # site name -> why not in it
    # per site, per modality: the test rows it holds it for (its own) or was sent
    available: dict[str, dict[str, int]] = field(default_factory=dict)

    def request_for(self, coord: Coordinator, key: str) -> dict[str, bytes]:
        """The other modalities' posteriors of site ``key``'s test samples, keyed by
        their positions in its ids (``{}`` where it sent none)."""
        if key not in self.rows:
            return {}
        mine = self.rows[key]
        order = np.argsort(mine)
        part = select_rows(self.table, mine[order], exclude=coord.sites[key].modalities)
        local = {m: Posteriors(order[np.searchsorted(mine[order], p.rows)], p.mu,
                               p.logvar) for m, p in part.items()}
        self.available.setdefault(key, {}).update({m: len(p) for m, p in part.items()})
        return {SERVER: encode_table(local)}

    def exact(self) -> bool:
        """Whether :meth:`multimodal` counts what the test samples hold (the server
        of a secure run sees only which sites hold a sample)."""
        return True

    def multimodal(self) -> int:
        """Test samples that hold two or more modalities."""
        n = max((int(r.max(initial=-1)) + 1 for r in self.rows.values()), default=0)
        count = np.zeros(n, np.int64)
        for p in self.table.values():
            count[p.rows] += 1
        return int((count >= 2).sum())


def align_tests(coord: Coordinator, replies: Mapping[str, HeldOutReply], latent_dim: int,
                max_rows: int) -> TestTables:
    """The sites' test replies checked (ids: distinct, 1 to ``MAX_ID_CHARS``
    characters, at most ``max_rows``; tables: the site's own modalities, rows among
    its ids) and aligned. A site whose reply fails a check is left out, named."""
    out, tables, ids = TestTables(), {}, {}
    for key, r in sorted(replies.items()):
        name = coord.name(key)
        try:
            tables[key] = _checked(coord, key, r, latent_dim, max_rows)
            ids[key] = r.identifiers
        except (PosteriorError, ValueError) as err:
            out.notes[name] = short_reason(str(err))
    union = sorted(set().union(*ids.values())) if ids else []
    row_of = {sid: i for i, sid in enumerate(union)}
    for key, site_ids in ids.items():
        rows = np.fromiter((row_of[i] for i in site_ids), np.int64, len(site_ids))
        out.rows[key] = rows
        tables[key] = {m: Posteriors(rows[p.rows], p.mu, p.logvar)
                       for m, p in tables[key].items()}
        out.available[key] = {m: len(p) for m, p in tables[key].items()}
    for key in _conflicts(tables):  # both sides of a clash: the server cannot tell
        out.notes[coord.name(key)] = ("sent posteriors of a test sample's modality "
                                      "that another site sent too")
        del out.rows[key], tables[key]
    out.table = merge_tables(list(tables.values()))
    return out


def _conflicts(tables: Mapping[str, Mapping[str, Posteriors]]) -> set[str]:
    """The sites whose table holds a (modality, test row) another site's holds."""
    keys = list(tables)
    clash: set[str] = set()
    for m in {m for table in tables.values() for m in table}:
        held = [(i, tables[k][m].rows) for i, k in enumerate(keys) if m in tables[k]]
        rows = np.concatenate([r for _, r in held])
        owner = np.concatenate([np.full(len(r), i) for i, r in held])
        uniq, counts = np.unique(rows, return_counts=True)
        twice = np.isin(rows, uniq[counts > 1])
        clash |= {keys[i] for i in np.unique(owner[twice])}
    return clash


def _checked(coord: Coordinator, key: str, r: HeldOutReply, latent_dim: int,
             max_rows: int) -> dict[str, Posteriors]:
    name, ids = coord.name(key), r.identifiers
    if r.reason and not ids:
        raise ValueError(r.reason)
    if not ids:
        raise ValueError("sent no test samples")
    if len(ids) > max_rows or len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids)} test ids ({len(set(ids))} distinct; at most "
                         f"max-site-rows = {max_rows})")
    if any(not 1 <= len(i) <= MAX_ID_CHARS for i in ids):
        raise ValueError(f"a test sample id outside 1 to {MAX_ID_CHARS} characters")
    if set(r.posteriors) - {SERVER}:
        raise ValueError(f"posteriors for {sorted(r.posteriors)[:3]}, not the server")
    table = decode_table(r.posteriors.get(SERVER, b""), latent_dim=latent_dim,
                         n_rows=len(ids), sender=name)
    stray = sorted(set(table) - set(coord.sites[key].modalities))
    if stray:
        raise ValueError(f"test posteriors of {stray}, which it does not hold")
    covered = np.zeros(len(ids), bool)  # an id it has no posterior of: a guess of
    for p in table.values():  # another site's ids, to be sent their posteriors
        covered[p.rows] = True
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} of its test ids without a posterior "
                         f"of its modalities")
    return table


def gather_tests(transport, coord: Coordinator, averaged: Mapping, wait: float,
                 latent_dim: int, max_rows: int) -> TestTables:
    """The cross-site evaluation's heldout message: the sites' test posteriors, aligned;
    a site that fails it is named in the tables' notes (it still evaluates)."""
    replies, failed = transport.gather(
        {key: HeldOutRequest(weights=coord.weights_for(key, averaged)) for key in coord.sites},
        wait)
    tables = align_tests(coord, replies, latent_dim, max_rows)
    tables.notes.update({coord.name(k): short_reason(f"failed: {why}")
                         for k, why in failed.items()})
    tables.notes.update({coord.name(k): "did not answer" for k in coord.sites
                         if k not in replies and k not in failed})
    return tables


def combine(evaluation: Mapping[str, Mapping], names: list[str],
            holders: Mapping[str, list[str]], tables: TestTables, draw: bool,
            method: str = "mmvm") -> dict:
    """``{"imputation": ..., "coherence": ...}`` in eval.json's shapes from the sites'
    ``impute/``, ``impute_rest/`` and ``coherence/`` metrics (each site's mean
    weighted by its ``_n`` count; by 1 where a site withheld its counts). Only what a
    site may have scored counts (:func:`_scored`); a site that refused the server's
    table is noted."""
    sums: dict[str, list[float]] = {}
    withheld = False
    for key, ev in evaluation.items():  # took part, then scored nothing to count
        why = "refused the server's test posteriors (its log says why)" \
            if ev.get("cross_refused") else "scored none of the others' test " \
            "posteriors: its min-rows is above 1, and others chose their values (the " \
            "server in plaintext, the peers, who may collude with it, in a secure run)" \
            if ev.get("cross_withheld") else \
            "withheld its imputation (report-losses)" \
            if ev.get(WITHHELD) and key in tables.rows else \
            "left out scores over fewer than a quarter of its test rows" \
            if ev.get("cross_floored") else \
            "left out test rows that its scores, differenced, would single out " \
            "(its min-rows)" if ev.get("cross_rows_left_out") else ""
        if why:
            tables.notes[str(ev.get("site", key))] = why
    for key, ev in evaluation.items():
        for k, v, n in _scored(ev, names, holders.get(key, []),
                               tables.available.get(key, {})):
            withheld |= n is None
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] += v * float(n or 1)
            acc[1] += float(n or 1)
    means = {k: s / n for k, (s, n) in sums.items() if n > 0}
    counts = {k: n for k, (_, n) in sums.items()}
    out = {}
    rest = {t: means[f"impute_rest/{t}"] for t in names if f"impute_rest/{t}" in means}
    if rest:
        samples = tables.multimodal()
        total = sum(rest[t] * counts[f"impute_rest/{t}"] for t in rest) / samples \
            if samples and not withheld and not tables.notes and tables.exact() \
            else math.nan
        out["imputation"] = {
            **_pairs(means, "impute", names), "rest": rest,
            "n": {t: int(counts[f"impute_rest/{t}"]) for t in rest},
            "samples": samples, "mean": sum(rest.values()) / len(rest), "total": total,
            "scoring": scoring(sample=draw), "where": "cross-site"}
    coherence = _pairs(means, "coherence", names)
    if coherence["pairs"]:
        cross = [v for k, v in coherence["pairs"].items() if len(set(k.split("->"))) == 2]
        own = [coherence["pairs"][f"{m}->{m}"] for m in names
               if f"{m}->{m}" in coherence["pairs"]]
        out["coherence"] = {**coherence, "mean": float(np.mean(cross)) if cross else math.nan,
                            "self": float(np.mean(own)) if own else math.nan,
                            "where": "cross-site"}
    if out:
        chance, judges, warnings = cross_warnings(out, evaluation, method)
        if rest and not tables.exact():
            warnings.append("no imputation total: a secure server does not see which "
                            "modalities a test sample holds at a site holding several "
                            "(each modality's mean from the rest stands)")
        out.update(chance={"majority": chance} if chance is not None else {},
                   warnings=warnings)
        if judges and "coherence" in out:  # what its coherence is read against
            out["classifier_accuracy"] = {m: judges[m] for m in names if m in judges}
    return out


def split_mismatch(coord: Coordinator, tables: TestTables) -> str | None:
    """A warning naming the sites whose test samples other sites hold far less often
    than their training samples (under half the share, of 10 or more test samples):
    they split the same samples differently, so a sample one site tests on trained
    at another, and the cross-site evaluation has few pairs, or none. A site's split
    is a hash of its ``--seed`` and each sample's id or group: a group column of each
    hospital's own patient numbers splits alike nowhere."""
    train = np.zeros(coord.n, np.int64)  # over the sites that sent test ids only: one
    for key in tables.rows:  # that sent none (share-test off) would look like a split
        train[coord.sites[key].held] += 1
    n = max((int(r.max(initial=-1)) + 1 for r in tables.rows.values()), default=0)
    test = np.zeros(n, np.int64)
    for rows in tables.rows.values():
        test[rows] += 1
    odd = []
    for key, rows in tables.rows.items():
        held = coord.sites[key].held
        shared, tested = int((train[held] >= 2).sum()), int((test[rows] >= 2).sum())
        if len(rows) >= 10 and shared and tested / len(rows) < 0.5 * shared / len(held):
            odd.append(f"{coord.name(key)} {tested} of its {len(rows)} test samples, "
                       f"against {shared} of its {len(held)} training samples")
    if not odd:
        return None
    return (f"the sites split their samples differently: other sites hold "
            f"{'; '.join(odd)}, so samples one site tested on trained at another and "
            f"the cross-site evaluation has few pairs to score; every site must "
            f"prepare with the same --seed and --test-fraction and, where it splits by "
            f"group, group ids all sites share (a patient pseudonym, not each "
            f"hospital's own patient numbers)")


def _scored(ev: Mapping, names: list[str], own: list[str], avail: Mapping[str, int]):
    """A site's cross-site scores as (key, value, count or None): only of a modality it
    holds (the target) from one of the run's (the source), each count a whole number
    from 1 to the rows it had of both (``avail``: per modality, the test rows it
    posted or was sent), each coherence a fraction: a site cannot speak for another's
    pairs, nor outweigh it."""
    for k, v in ev.items():
        kind, _, pair = str(k).partition("/")
        if kind not in ("impute", "impute_rest", "coherence") or k.endswith("_n"):
            continue
        src, _, tgt = pair.rpartition("->") if kind != "impute_rest" else ("", "", pair)
        n = ev.get(f"{k}_n")
        most = avail.get(src, 0) if kind == "coherence" else avail.get(tgt, 0) \
            if kind == "impute_rest" else min(avail.get(src, 0), avail.get(tgt, 0))
        if tgt not in own or (kind != "impute_rest" and src not in names) or \
                not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (kind == "coherence" and not 0.0 <= v <= 1.0) or \
                (n is not None and not (isinstance(n, (int, float)) and
                                        float(n).is_integer() and 1 <= n <= most)):
            continue
        yield k, float(v), n


def _pairs(means: Mapping[str, float], prefix: str, names: list[str]) -> dict:
    pairs = {f"{s}->{t}": means[f"{prefix}/{s}->{t}"] for s in names for t in names
             if f"{prefix}/{s}->{t}" in means}
    matrix = [[pairs.get(f"{s}->{t}", math.nan) for t in names] for s in names]
    return {"pairs": pairs, "names": list(names), "matrix": matrix}


def cross_warnings(cross: Mapping, evaluation: Mapping[str, Mapping], method: str
                   ) -> tuple[float | None, dict[str, float], list[str]]:
    """The chance of the cross-site coherence (the sites' commonest test label's
    share, their mean), the judges' accuracy on the sites' test data (per modality,
    the mean over its sites) and the warnings a central evaluation would give
    (:func:`mmvm.chance.evaluation_warnings`): coherence at chance, imputation no
    better than one constant output (the sites' ``constant_nll``), a judge near
    chance on its site's test data. A run whose weights stayed at the sites has no
    other reading of them."""
    from mmvm.chance import evaluation_warnings

    def means(prefix: str) -> dict[str, float]:
        got: dict[str, list[float]] = {}
        for ev in evaluation.values():
            for k, v in ev.items():
                if str(k).startswith(prefix) and isinstance(v, (int, float)) \
                        and math.isfinite(v):  # NaN: that site did not measure it
                    got.setdefault(str(k)[len(prefix):], []).append(float(v))
        return {m: sum(v) / len(v) for m, v in got.items()}

    majority = list(means("majority/").values())
    chance = sum(majority) / len(majority) if majority else None
    result = {"method": method, "coherence": cross.get("coherence") or {},
              "imputation": cross.get("imputation") or {},
              "reconstruction": {"baseline": means("constant_nll/")},
              "classifier_accuracy": means("judge_accuracy/"),
              "chance": {"majority": math.nan if chance is None else chance}}
    return chance, result["classifier_accuracy"], evaluation_warnings(result)

