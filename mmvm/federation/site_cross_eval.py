"""A site's part of the cross-site evaluation: its own modalities imputed and judged
from the other sites' test posteriors (the server's part: :mod:`mmvm.federation.cross_eval`;
secure runs seal them to the peers instead: :mod:`mmvm.federation.sealed_heldout`).

Coherence and imputation need one modality's encoder and another's decoder on the same
sample. A plaintext run whose sites keep their weights (``allow-collect``), or a
deployment whose server has no data, had neither. Here each site sends the server its
test samples' ids and its own modalities' posteriors (:func:`test_posteriors`); the
server aligns them by id and gives every site the other modalities' posteriors of the
test samples it holds; the site scores (:func:`cross_values`), per own modality t and
source s (another site's modality, or another of its own):

- **imputation**: -w_t log p(x_t | z), z one seeded draw of q(z | x_s) (or its mean),
  and from the rest: the mean of those over the sample's other modalities. For MMVM
  and independent VAEs (the methods that train federated) this is
  :func:`mmvm.imputation.imputation_nll`: t from the mixture of the present unimodal
  posteriors, scored by the mean NLL over its components; with means the numbers equal
  a central evaluation of the same weights;
- **coherence**: the site's judge of t (trained on its own train file, cached as
  ``mmvm evaluate``'s) on the generated x_t, z drawn from q(z | x_s), against the
  site's label of the sample, as :func:`mmvm.evaluation.coherence`; t -> t as well
  (``self``). A sample counts where the site knows its label (a central evaluation
  also counts samples that lack t: their label is at another site).

Only means and counts leave the site.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch

from mmvm.data import open_dataset
from mmvm.evaluation import unimodal_posteriors
from mmvm.federation.messages import SERVER, HeldOutReply
from mmvm.federation.posteriors import (
    PosteriorError,
    Posteriors,
    decode_table,
    encode_table,
)
from mmvm.federation.reply_cache import request_digest
from mmvm.federation.site import Site


def answer_held_out(site: Site, share: bool, weights, load) -> HeldOutReply:
    """The heldout answer: the same reply to the same ``weights`` (a restarted
    server asks again, also after the site's evaluation), else once a run
    (:meth:`Progress.held_out_step`, checked before ``load()`` loads the weights)."""
    digest = request_digest({}, weights)
    again = site.replies.get("heldout", 0, digest)
    if again is not None:  # what its node config no longer shares is not sent again
        return again if share or not again.posteriors else held_out_reply(site, share,
                                                                          digest)
    site.progress.held_out_step(site.name)
    load()
    reply = held_out_reply(site, share, digest)
    site.replies.keep("heldout", 0, reply, digest)
    return reply


def held_out_reply(site: Site, share: bool, digest: str) -> HeldOutReply:
    """The ids of the site's test samples and its posteriors of them (float32: an
    evaluation's precision), the averaged weights (``digest``) loaded; empty, with
    why, without a test file or ``share``. Answered once a run (the endpoint checks
    :meth:`Progress.held_out_step` first, and repeats this reply to the same weights):
    a server asking again with other weights would get the test set encoded once
    more, by encoders of its choosing."""
    if not share:
        return HeldOutReply(reason="its node config keeps its test posteriors "
                                   "(share-test = false)")
    if not site.test_path:
        return HeldOutReply(reason="no test file")
    test = open_dataset(site.test_path, site.names, site.cfg.data)
    if set(site.names) >= set(site.global_names):  # no other site has its samples:
        table = _presence(site, test)  # which rows hold what, no values
    else:
        table = test_posteriors(site, test)
    site.progress.held_out = digest
    return HeldOutReply(identifiers=list(test.sample_ids),
                        posteriors={SERVER: encode_table(table)} if table else {})


def admitted(site: Site, share: bool, posteriors: Mapping[str, bytes], digest: str,
             notes: list[str], persist, expected: bool = False, chosen_floor: int = 1
             ) -> Mapping[str, bytes] | None:
    """The test posteriors an evaluation may score (the server's table, or the peers'
    envelopes), or None (why: in ``notes``, the site's journal). Only where the site
    took part (``share``, its heldout answered with the same weights, ``digest``) and
    once a run: each evaluation that scores them answers the server's table, and the
    server chooses which rows a table holds. ``persist()`` writes the once before
    anything is scored (a failed evaluation does not hand the server another try).
    ``expected``: scored without any (a secure site that no peer sealed to scores
    its own modalities from each other). ``chosen_floor``: the node config's
    ``min-rows`` at a deployed site: above 1, no posteriors another party chose are
    scored (:func:`server_chosen_values`; a secure site scores its own modalities)."""
    if share and chosen_floor > 1 and posteriors:
        notes.append(f"the evaluation: the test posteriors ignored: "
                     f"{server_chosen_values(chosen_floor)}")
        if not expected:
            return None
        posteriors = {}
    if not posteriors and not expected:
        return None
    p = site.progress
    why = ("its node config keeps it out (share-test = false)" if not share
           else "it answered no heldout message in this run" if not p.held_out
           else "other weights than its heldout answer's" if p.held_out != digest
           else "scored once in this run already" if p.cross_scored else "")
    if why:
        notes.append(f"the evaluation: the test posteriors ignored: {why}")
        return None
    p.cross_scored = True
    persist()
    return posteriors


def server_chosen_values(floor: int) -> str:
    """Why a deployed site whose ``min-rows`` is above 1 scores nothing cross-site
    from posteriors another party chose: ``min-rows`` keeps the scores' row sets from
    singling out a few test rows (:func:`small_cells`), but the values are chosen
    too: by the server in plaintext, by the peers that seal them in a secure run
    (peers may collude with the server). Two sources over the same rows, equal but
    at one row, give two scores whose difference is that one sample's imputation NLL
    (through the site's own decoder) and a bit of its label (through its judge);
    and plaintext runs, whose ids travel in clear, can be compared with each other.
    A secure site still scores its own modalities from each other."""
    return (f"its node config's min-rows = {floor} asks that no score single out a "
            f"few test samples, and the posterior values come from others (the "
            f"server chooses them in a plaintext run, the peers in a secure one, "
            f"and may collude): two sources equal but at one row would")


@torch.no_grad()
def test_posteriors(site: Site, test) -> dict[str, Posteriors]:
    """q(z | x_m) of the site's own modalities for the rows of ``test`` that hold them
    (rows: positions in ``test``)."""
    parts: dict[str, list] = {}
    for name, rows, mu, lv in unimodal_posteriors(site.model, test, site.pass_rows,
                                                  site.device):
        parts.setdefault(name, []).append((rows, mu.float().cpu().numpy(),
                                           lv.float().cpu().numpy()))
    return {m: Posteriors(np.concatenate([r for r, _, _ in p]),
                          np.concatenate([a for _, a, _ in p]),
                          np.concatenate([b for _, _, b in p])) for m, p in parts.items()}


def _presence(site: Site, test) -> dict[str, Posteriors]:
    """The rows of ``test`` that hold each own modality, with zeros for values."""
    mask = np.asarray(test.mask, dtype=bool)
    zeros = lambda n: np.zeros((n, site.cfg.model.latent_dim), np.float32)  # noqa: E731
    out = {}
    for j, m in enumerate(test.names):
        rows = np.flatnonzero(mask[:, j])
        if len(rows):
            out[m] = Posteriors(rows, zeros(len(rows)), zeros(len(rows)))
    return out


def received(site: Site, blob: bytes, n_test: int, log) -> dict[str, Posteriors] | None:
    """The other modalities' test posteriors the server sent, checked: modalities of
    the run that the site does not hold, rows among its ``n_test`` test rows; None
    where they are not (why: told to ``log``, the site's journal; the server learns
    only that they were refused, not a text that may name the test set's size)."""
    try:
        table = decode_table(blob, latent_dim=site.cfg.model.latent_dim, n_rows=n_test,
                             sender="the server")
    except PosteriorError as err:
        log(f"the evaluation: the server's test posteriors refused: {err}")
        return None
    stray = sorted(m for m in table if m not in site.global_names or m in site.names)
    if stray:
        log(f"the evaluation: the server's test posteriors refused: posteriors of "
            f"{stray}, which are not the run's other modalities")
        return None
    return table


RowValues = dict[str, tuple[np.ndarray, np.ndarray]]  # score -> (test rows, values)


@torch.no_grad()
def cross_values(site: Site, test, others: Mapping[str, Posteriors],
                 judges: Mapping | None, sample: bool = True,
                 coherence_sample: bool = True) -> RowValues:
    """Per score, the test rows it covers and each row's value: ``impute/<s>-><t>``,
    ``impute_rest/<t>`` (weighted NLLs) and ``coherence/<s>-><t>`` (1.0 where the
    judge was right; ``judges`` given and the test file labelled); nothing for a
    pair no sample holds. :func:`cross_means` makes the scores of them."""
    model, names = site.model, site.global_names
    model.eval()
    gen = torch.Generator().manual_seed(site.cfg.train.seed)  # the imputation's draws
    coh_gen = torch.Generator().manual_seed(site.cfg.train.seed + 1)  # and coherence's
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(key: str, values: torch.Tensor, rows: np.ndarray) -> None:
        parts.setdefault(key, []).append((rows, values.double().numpy()))

    targets = [t for t in site.names if judges is not None and t in judges]
    for start in range(0, len(test), site.pass_rows):
        rows = np.arange(start, min(start + site.pass_rows, len(test)))
        b = test.batch(torch.as_tensor(rows))
        post = _sources(site, b, rows, list(test.names), others)
        eps = torch.randn(len(rows), len(names), model.code_dim, generator=gen)
        for t in site.names:
            _impute(site, t, b, post, eps, sample, add, rows)
        labels = b.get("label")
        for t in targets if labels is not None else ():
            for s, (have, mu, lv) in post.items():
                keep = have & (labels >= 0)
                if bool(keep.any()):
                    z = _draw(mu[keep], lv[keep], coherence_sample, coh_gen)
                    pred = judges[t](model.generate(t, z.to(site.device))).argmax(1)
                    add(f"coherence/{s}->{t}", (pred.cpu() == labels[keep]).double(),
                        rows[keep.numpy()])
    return {k: (np.concatenate([r for r, _ in p]), np.concatenate([v for _, v in p]))
            for k, p in parts.items()}


def cross_means(values: RowValues, leave_out: np.ndarray | None = None
                ) -> dict[str, float]:
    """Each score's mean over its rows but ``leave_out``, with its count under
    ``<key>_n``; nothing for a score left without rows."""
    out: dict[str, float] = {}
    for key, (rows, v) in values.items():
        kept = v if leave_out is None else v[~np.isin(rows, leave_out)]
        if len(kept):
            out[key], out[f"{key}_n"] = float(kept.sum() / len(kept)), float(len(kept))
    return out


def _sources(site: Site, b: dict, rows: np.ndarray, columns: list[str],
             others: Mapping[str, Posteriors]
             ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per modality of the run: (present [B], mu [B, D], logvar [B, D]) for the batch,
    its own encoded now, the others' from the server's table."""
    out = {}
    for m in site.global_names:
        B, D = len(rows), site.model.code_dim
        mu, lv = torch.zeros(B, D), torch.zeros(B, D)
        if m in site.names:
            have = b["mask"][:, columns.index(m)].clone()
            if bool(have.any()):
                got = site.model.encode_modality(m, b["x"][m][have].to(site.device))
                mu[have], lv[have] = got[0].float().cpu(), got[1].float().cpu()
        elif m in others:
            found, at = others[m].lookup(rows)
            have = torch.from_numpy(found)
            mu[have] = torch.from_numpy(others[m].mu[at[found]])
            lv[have] = torch.from_numpy(others[m].logvar[at[found]])
        else:
            continue
        out[m] = (have, mu, lv)
    return out


def _draw(mu: torch.Tensor, lv: torch.Tensor, sample: bool, gen: torch.Generator,
          eps: torch.Tensor | None = None) -> torch.Tensor:
    if not sample:
        return mu
    noise = torch.randn(mu.shape, generator=gen) if eps is None else eps
    return mu + torch.exp(0.5 * lv) * noise


def _impute(site: Site, t: str, b: dict, post: Mapping, eps: torch.Tensor,
            sample: bool, add, rows: np.ndarray) -> None:
    """Modality t of the batch's rows that hold it, from each other modality present
    (one draw of each, ``eps``'s) and from all of them (the mean of those NLLs)."""
    model, names = site.model, site.global_names
    holds = post[t][0] if t in post else torch.zeros(len(eps), dtype=torch.bool)
    weight = float(model.specs[t].weight)
    rest = torch.zeros(len(eps), dtype=torch.float64)
    count = torch.zeros(len(eps), dtype=torch.float64)
    for s, (have, mu, lv) in post.items():
        keep = holds & have if s != t else torch.zeros_like(holds)
        if not bool(keep.any()):
            continue
        j = names.index(s)
        z = _draw(mu[keep], lv[keep], sample, None, eps[keep, j])
        x = b["x"][t][keep].to(site.device)
        nll = -weight * model.log_likelihood(t, x, model.decode(t, z.to(site.device)))
        nll = nll.double().cpu()
        add(f"impute/{s}->{t}", nll, rows[keep.numpy()])
        rest[keep] += nll
        count[keep] += 1
    scored = count > 0
    if bool(scored.any()):
        add(f"impute_rest/{t}", rest[scored] / count[scored], rows[scored.numpy()])


def small_cells(rows: Mapping[str, np.ndarray], floor: int) -> np.ndarray:
    """The test rows to leave out of every score so that no combination of the
    scores singles out fewer than ``floor`` samples.

    The server reads each score's sum (mean x count), and chooses which rows each
    source's table holds. Group the rows into cells by which scores cover them (a
    Venn diagram of the scores' row sets). Any linear combination of the sums is,
    row by row, the same combination of that row's values, the same for every row
    of a cell (its scores are the same): so it is a sum over whole cells. Where each
    cell covers ``floor`` rows or more, no difference of two scores, nor of three
    (``2 x rest - the two pairs``), nor any other, isolates fewer. Leaving a small
    cell's rows out of all scores keeps the others' cells as they are; with no
    missing modality there is one cell and nothing is left out."""
    keys = sorted(k for k, r in rows.items() if len(r))
    if floor <= 1 or not keys:
        return np.zeros(0, np.int64)
    twice = [k for k in keys if len(np.unique(rows[k])) < len(rows[k])]
    if twice:  # a row counted twice in one sum would be a cell of its own
        raise ValueError(f"scores {twice} cover a test row more than once")
    covered = np.unique(np.concatenate([rows[k] for k in keys]))
    member = np.stack([np.isin(covered, rows[k]) for k in keys], axis=1)
    _, cell, size = np.unique(member, axis=0, return_inverse=True, return_counts=True)
    return covered[size[cell.ravel()] < floor]


def floored_means(values: RowValues, own: Collection[str], floor: int,
                  log: Callable[[str], None]) -> tuple[dict[str, float], bool]:
    """The scores of ``values`` a site whose ``min-rows`` is ``floor`` reports, and
    whether rows were left out (:func:`small_cells`).

    A score from one of the site's ``own`` modalities covers rows the site's data
    fixes, not the server: where it would lose some, it is not reported at all, or
    a server that left a row out in one run and not in another (two runs of the
    same weights) would read that row's value from the difference (withholding a
    score only merges cells: the rest still sum over whole cells). Above a floor of
    1 the means are rounded to float32: a float64 mean times its count gives back
    low-order bits of a small value among large ones."""
    cells = small_cells({k: r for k, (r, _) in values.items()}, floor)
    touched = sorted(k for k, (rows, _) in values.items() if len(cells)
                     and "->" in k and k.split("/", 1)[1].split("->")[0] in own
                     and np.isin(rows, cells).any())
    if len(cells):
        log(f"the evaluation: {len(cells)} test rows left out of the cross-site "
            f"scores: fewer than min-rows = {floor} rows share the scores that cover "
            f"them, so differences of the scores would single them out"
            + (f"; not reported, as they would lose rows the site's own data fixes: "
               f"{', '.join(touched)}" if touched else ""))
    means = cross_means({k: v for k, v in values.items() if k not in touched}, cells)
    if floor > 1:
        means = {k: v if k.endswith("_n") else float(np.float32(v))
                 for k, v in means.items()}
    return means, bool(len(cells))


def judges_too_large(site: Site, recipe, policy) -> str | None:
    """Why the judges of the site's modalities under ``recipe`` (the run config's
    ``[eval]``: epochs, width, ensemble members, batch size, shift) exceed the node
    config's ``max-params``, ``max-steps``, ``max-visits``, ``max-batch`` or
    ``max-step-gib``, or None: a submitter must not size the training a site's
    evaluation runs. Memory is counted at the judge's batch, or at the rows a judge
    scores at a time (test rows too) if more, then with the training's activations."""
    from mmvm.classifier_nets import build_classifier
    from mmvm.classifiers import (
        PREDICT_ROWS,
        recipe_for_rows,
        training_steps,
        vocabularies,
    )
    from mmvm.footprint import judge_step_bytes
    from mmvm.judges import is_image

    n = len(site.data)
    classes = int(site.data.labels.max()) + 1 if site.data.labels is not None else 2
    tokens = vocabularies(site.cfg)
    for m in site.names:
        r = recipe_for_rows(recipe, n, bool(recipe.min_steps) and is_image(site.train_path, m))
        with torch.device("meta"):
            params = sum(p.numel() for p in build_classifier(
                site.data.shapes[m], max(classes, 2), r.width, tokens.get(m, 0),
                r.members).parameters())
        for key, value, limit in (("max-params", params, policy.max_params),
                                  ("max-steps", training_steps(n, r), policy.max_steps),
                                  ("max-visits", r.members * r.epochs * n,
                                   policy.max_visits),
                                  ("max-batch", min(r.batch_size, n), policy.max_batch)):
            if value > limit:
                return (f"the judge of {m} under the run's [eval] would take {value:,} "
                        f"({key}; the node config allows {limit:,})")
        need = judge_step_bytes(site.data.shapes[m], max(classes, 2), r.width,
                                tokens.get(m, 0), max(min(r.batch_size, n), PREDICT_ROWS),
                                r.shift, r.rotate)
        if need > policy.max_step_gib * 2**30:
            return (f"the judge of {m} under the run's [eval] would take "
                    f"{need / 2**30:,.1f} GiB a step (max-step-gib; the node config "
                    f"allows {policy.max_step_gib:,})")
    return None

