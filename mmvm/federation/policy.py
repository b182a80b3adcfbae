"""A site's own protection policy, read from its node config.

Whoever submits a run writes the run config; only a site's administrator writes its
SuperNode's node config (``flower-supernode --node-config '...'``). So everything that
protects the site is decided here, and a run that asks for less is refused before
anything leaves the site:

=====================  ==========================================================
``keys``               the site's ``site_keys.json`` (or its folder): makes it a
                       secure site
``directory``          the public key directory (default: next to ``keys``)
``state``              where the site keeps its state between messages (default
                       ``~/.mmvm/state/<site>``); run config ``state-dir`` is ignored
``require-secure``     refuse runs with ``secure = false`` (default: on with ``keys``)
``allow-collect``      hand the final weights to the server when a run asks
                       (default: off with ``keys``, on without); off, a plaintext
                       site also refuses to average weights (sent in clear)
``peers``              the peers it expects, pinned by fingerprint:
                       ``"b=1a2b 3c4d ...;c=..."``; ``"*"`` trusts the whole
                       directory (weaker, say so explicitly). Required with ``keys``.
``allow-pair-masking`` accept FedAvg groups of two sites (each then learns the
                       other's weights from the mean); default off: groups >= 3
``require-psi``        refuse keyed-pseudonym alignment (ids guessable) and
                       plaintext runs (ids in clear); needs ``keys``
``min-rows``           secure runs: refuse a plan with a window that trains fewer
                       than this many of the site's rows (default 1,
                       :meth:`SitePolicy.check_plan`), and leave out of the
                       cross-site scores test rows that fewer share their scores
                       with (``site_cross_eval.small_cells``); above 1: score no
                       posteriors others chose (``server_chosen_values``)
``max-steps``          the most optimiser steps a run's plan may hold (default
                       10,000,000; 8 bytes a step held, ~100 while it is checked)
``max-visits``         the most sample visits (epochs x aligned samples) a run may
                       ask for (default 100,000,000; ~60 bytes each while checked)
``max-batch``          the largest batch a run may ask for (default 4,096)
``max-params``         the most parameters of the site's model under the run's
                       config (default 200,000,000; counted before it is built)
``max-align-rows``     the largest set of identifiers another site may align with
                       this one (default 1,000,000): a peer can fill its set with
                       guesses of this site's ids, and attach says which are this
                       site's. PSI: checked on each set this site multiplies;
                       pseudonyms: on each peer's count (the server's, from
                       describe) before this site's pseudonyms leave
``eval-labels``        the label columns the site's final evaluation may probe,
                       comma-separated, ``fnmatch`` patterns (``"label,label.dx"``,
                       ``"label.*"``, ``"*"``; ``""``: none). Default: ``label``
                       with ``keys``, ``*`` without. The run config names the
                       column (``data.label``); one it does not allow gets no
                       probe (reconstruction is still evaluated)
``device``             where the site trains (``cpu``, ``cuda``, ``cuda:N``, ``mps``,
                       ``auto``); default: ``auto`` (a GPU when the host has one),
                       never the run config's ``train.device``
``streaming``          read the site's files through a decoded copy in
                       ``<state>/decoded`` (true) or whole (false); default: the
                       site decides by their size (never the run config:
                       :mod:`mmvm.federation.site_config`)
``report-losses``      send the server each window's loss sums and the final
                       evaluation's reconstruction error (default on); off, the
                       site sends row counts, timings and the evaluation's
                       fractions rounded to 0.05, keeping the sums
                       in ``<site>.losses.csv`` in its state folder (with
                       ``eval-labels = ""`` its evaluation no probe either; what
                       a crafted mean still tells: deploy/README.md 7)
``allow-compile``      let the run config's ``train.compile`` compile the site's
                       networks (torch Inductor writes and builds code; default off)
``share-test``         take part in the cross-site evaluation (default on, off
                       where ``report-losses`` is): plaintext runs send the server
                       its test ids and posteriors; secure runs align the ids as
                       training's (pseudonyms, or a PSI ring) and seal the
                       posteriors to the peers sharing each sample
                       (:mod:`mmvm.federation.sealed_heldout`); each site scores
                       its modalities from the others'
                       (:mod:`mmvm.federation.cross_eval`); off, the site takes
                       no part in it. Answered once a run, with the weights its
                       evaluation then uses; no score over fewer than a quarter
                       of its test rows
``holders``            per modality this site holds, every site that holds it
                       (``"frontal=hospital-a,hospital-c;lateral=hospital-b"``, this
                       site included; ``frontal=hospital-a``: never shared): who a
                       run may say shares it, in either mode; any other group is
                       refused at attach. Only the server says that; a group of the
                       site and colluding holders unmasks its weights (secure), a
                       made-up holder shares a modality it holds alone (plaintext;
                       deploy/README.md 7). Default: the server's word
                       (``mmvm site check`` warns)
``pictures``           at the final evaluation, draw the site's own model's
                       pictures from its test file into its state folder
                       (``<site>-pictures/``; default on; nothing of them leaves
                       the site: :mod:`mmvm.federation.site_pictures`)
``experiment``         the experiment configs the site may run, by digest (64 hex
                       digits each, comma-separated; ``mmvm site check --config
                       FILE --set ...`` prints it): the run config chooses the model,
                       and encoders chosen to be inverted make the posteriors a site
                       sends its samples themselves (deploy/README.md 7). A run under
                       any other is refused at its first message, and so is a
                       plaintext run that shares one of its modalities (the server
                       alone chooses the mean it loads: :meth:`check_sharing`).
                       Default: any (``mmvm site check`` warns)
``max-step-gib``       the most memory (whole GiB) one training step may need at
                       the plan's batch size (the layers' outputs and the
                       objective's terms), a window's posterior tables, the final
                       evaluation's latents, a coherence judge's step (default 16;
                       estimated on the meta device, :mod:`mmvm.footprint`)
``max-state-gib``      the most its runs' state folders (``run-<id>``) may hold
                       before a new run is refused (default 100; each run keeps its
                       state for ``resume`` and its trained model)
=====================  ==========================================================

The ``max-*`` limits (and ``streaming``) keep a server's plan or a submitter's config
from exhausting the site's host (one attach message could ask for 10^9 epochs). A
simulation has no node config: its sites follow the run config (``secure``,
``keys-dir``), a test bed run by one person, where none of this applies.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmvm.schedule import batches_per_epoch
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SitePublicKeys
from mmvm.secure.pins import pinned_entries

KEYS = ("keys", "directory", "state", "require-secure", "allow-collect", "peers",
        "allow-pair-masking", "require-psi", "min-rows", "max-steps", "max-visits",
        "max-batch", "max-params", "max-step-gib", "max-align-rows", "max-state-gib",
        "eval-labels",
        "device", "streaming", "allow-compile", "report-losses", "pictures", "share-test",
        "holders", "experiment")
LIMITS = {"max-steps": 10_000_000, "max-visits": 100_000_000, "max-batch": 4096,
          "max-params": 200_000_000, "max-step-gib": 16,
          "max-align-rows": 1_000_000, "max-state-gib": 100}  # the max-* keys' defaults


class PolicyError(SecurityError):
    """A run asks for something the site's policy refuses, or the policy is invalid."""


@dataclass(frozen=True)
class SitePolicy:
    keys: str = ""
    directory: str = ""
    state: str = ""
    require_secure: bool = False
    allow_collect: bool = True
    peers: Mapping[str, str] | None = None  # name -> fingerprint; None = any entry
    allow_pair_masking: bool = False
    require_psi: bool = False
    min_rows: int = 1  # secure runs: fewest own rows a window may train (check_plan)
    max_steps: int = LIMITS["max-steps"]
    max_visits: int = LIMITS["max-visits"]
    max_batch: int = LIMITS["max-batch"]
    max_params: int = LIMITS["max-params"]
    max_step_gib: int = LIMITS["max-step-gib"]
    max_align_rows: int = LIMITS["max-align-rows"]
    max_state_gib: int = LIMITS["max-state-gib"]
    eval_labels: tuple[str, ...] = ("*",)  # label columns probed at evaluation
    device: str = ""  # where the site trains; "" (simulation) = the run config's
    streaming: bool | None = None  # None: by the files' size (site_config.streams)
    allow_compile: bool = True  # a deployment site's default: False (load_policy)
    report_losses: bool = True  # off: loss sums and test NLL stay at the site
    pictures: bool = False  # a deployment site's default: True (load_policy)
    share_test: bool = True  # test ids (pseudonyms) and posteriors for cross-site scores
    holders: Mapping[str, frozenset[str]] | None = None  # modality -> its holders
    experiments: tuple[str, ...] = ()  # config digests it may run (node config experiment); () = any
    test_bed: bool = False  # simulation: the run config is the only config
    sources: tuple[str, ...] = field(default=())  # node-config keys that were set

    @property
    def secure_site(self) -> bool:
        return bool(self.keys)

    @property
    def plain_floor(self) -> int:
        """``min-rows`` where the cross-site evaluation would score values another
        party chose (the server in plaintext, colluding peers in a secure run): above
        1, it scores none (site_cross_eval's ``server_chosen_values``); 1 for a test
        bed, and where ``share-test`` is off (it takes no part, for its own reason)."""
        return self.min_rows if self.share_test and not self.test_bed else 1

    def label_allowed(self, label: str) -> bool:
        """Whether the final evaluation may report a probe of label column ``label``
        (its accuracy and the commonest class's share describe that column at the
        site; the run config, not the site, names it)."""
        return self.test_bed or any(fnmatch.fnmatchcase(label, p) for p in self.eval_labels)

    def check_run(self, site: str, secure: bool, align: str) -> None:
        """Refuse a run the policy does not allow, naming the policy."""
        if self.require_secure and not secure:
            raise PolicyError(f"site {site}: its node config requires secure runs "
                              f"(require-secure); this run has secure = false. Nothing "
                              f"was sent.")
        if self.require_psi and not (secure and align == "psi"):
            raise PolicyError(f"site {site}: its node config requires PSI alignment "
                              f"(require-psi); this run " + (
                                  f"aligns by {align!r}" if secure else
                                  "has secure = false, which sends sample ids in clear")
                              + ". Nothing was sent; submit it with secure=true "
                                "align='psi' in its run config")

    def check_experiment(self, site: str, cfg) -> None:
        """Refuse a run whose experiment config (``cfg``, the run config's file and
        ``set`` applied) is not one the node config's ``experiment`` lists."""
        from mmvm.config import config_digest

        digest = config_digest(cfg)
        if not self.allows(digest):
            raise PolicyError(
                f"site {site}: the run's experiment config (digest {digest[:16]}...) is "
                f"not one its node config allows (experiment="
                f"{','.join(d[:16] + '...' for d in self.experiments)}): whoever submits "
                f"a run chooses the model, and encoders chosen to be inverted would "
                f"send this site's samples as their posteriors. `mmvm site check "
                f"--config FILE --set ...` prints a config's digest. Nothing was sent")

    def check_holders(self, site: str, shared: Mapping[str, Sequence[str]]) -> None:
        """The server's groups of holders (a secure run's masking groups) against
        the node config's ``holders``: each must be exactly the listed holders of its
        modality (no roster: taken as the server says)."""
        if self.holders is None:
            return
        for m, named in sorted(shared.items()):
            want = self.holders.get(m)
            if want is None or set(named) != want:
                raise PolicyError(
                    f"site {site}: the server puts modality {m!r} in the group "
                    f"{sorted(named)}; its node config's holders= lists "
                    + (f"{sorted(want)}" if want is not None else f"no group for {m!r}")
                    + ": a group other than the real holders could unmask this site's "
                    "weights with the help of a few of them (secure), or be a name the "
                    "server made up to share a modality the site holds alone "
                    "(plaintext). Nothing was sent")

    def check_size(self, site: str, n: int, batch_size: int, epochs: int) -> None:
        """Refuse, before anything is built, a plan over ``n`` aligned samples larger
        than the site's ``max-*`` limits (its steps, sample visits, batch). A
        simulation's test bed has no node config to set them: no limits there."""
        if self.test_bed:
            return
        per_epoch = batches_per_epoch(n, batch_size)
        over = [f"{what.format(value)}; its node config allows {limit:,} ({key})"
                for key, value, limit, what in (
                    ("max-batch", batch_size, self.max_batch, "a batch of {:,} rows"),
                    ("max-visits", epochs * n, self.max_visits,
                     f"{epochs:,} epochs over {n:,} samples: {{:,}} rows"),
                    ("max-steps", epochs * per_epoch, self.max_steps,
                     f"{epochs:,} epochs x {per_epoch:,} steps = {{:,}} steps"))
                if value > limit]
        if over:  # every limit it breaks, not only the first
            raise PolicyError(f"site {site}: the plan asks for " + "; and ".join(over))

    @property
    def plain_sharing_refused(self) -> str:
        """Why this site refuses a plaintext run that shares its modalities' weights
        (:meth:`check_sharing`), "" where it does not: ``mmvm site check`` says it."""
        return ("allow-collect off" if not self.allow_collect else
                "experiment pinned" if self.experiments else "")

    def allows(self, digest: str) -> bool:
        """Whether the node config's ``experiment`` admits the config of ``digest``."""
        return not self.experiments or digest in self.experiments

    def check_sharing(self, site: str, shared: Mapping[str, Sequence[str]],
                      secure: bool) -> None:
        """The server's ``shared`` (modality -> its holders) against the node
        config's ``holders``, in either mode; and refuse a plaintext run that would
        share modalities' weights when the site keeps its weights (``allow-collect``
        off: it would send them in clear every window) or pins its ``experiment``:
        without keys a site cannot tell real holders from names the server made up,
        so the server alone chooses the "mean" it loads, and a mean chosen to be
        inverted is the encoder the pin refuses (security review of 2026-12-06)."""
        self.check_holders(site, shared)
        if not shared or secure or self.test_bed:
            return
        listed, why = ", ".join(sorted(shared)), self.plain_sharing_refused
        if why == "allow-collect off":
            raise PolicyError(f"site {site}: its node config keeps its weights "
                              f"(allow-collect = false), and this plaintext run would send "
                              f"those of {listed} to the server in clear every "
                              f"window; run with secure = true (masked) or allow-collect")
        if why:
            raise PolicyError(f"site {site}: its node config pins the experiment "
                              f"(experiment=), and in this plaintext run the server alone "
                              f"chooses the weights of {listed} the site loads every "
                              f"window (the holders' mean, which nothing checks without "
                              f"keys): weights chosen to be inverted would send this "
                              f"site's samples as their posteriors. Nothing was sent; "
                              + ("run with secure = true, or where " if self.keys else
                                 "this site (no keys) takes part in runs where ")
                              + f"no other site holds {listed}")

    def check_params(self, site: str, count: int) -> None:
        """Refuse a model of more than ``max-params`` parameters (counted unbuilt);
        not in a simulation's test bed."""
        if count > self.max_params and not self.test_bed:
            raise PolicyError(f"site {site}: the run's model has {count:,} parameters at "
                              f"this site; its node config allows {self.max_params:,} "
                              f"(max-params)")

    def check_step(self, site: str, batch_size: int, estimate: Callable[[], int]) -> None:
        """Refuse a step that would need more than ``max-step-gib`` at ``batch_size``
        rows; ``estimate()`` gives its bytes (:func:`mmvm.footprint.step_bytes`, only
        called where the limits apply: not in a simulation's test bed). The
        parameters do not bound it: a run config can add modalities the site does not
        hold (the objective pairs all of them) or widen a convolution's outputs."""
        if self.test_bed:
            return
        need = estimate()
        if need > self.max_step_gib * 2**30:
            raise PolicyError(f"site {site}: one training step of the run's model at a "
                              f"batch of {batch_size:,} rows needs about "
                              f"{need / 2**30:,.1f} GiB; its node config allows "
                              f"{self.max_step_gib:,} GiB (max-step-gib)")

    def check_held(self, site: str, what: str, need: int) -> None:
        """Refuse to hold more than ``max-step-gib`` in ``what`` (not in a test bed);
        how much goes to the site's log only: it would give the test set's size away."""
        if not self.test_bed and need > self.max_step_gib * 2**30:
            raise PolicyError(f"site {site}: {what} would need more than its node config "
                              f"allows, {self.max_step_gib:,} GiB (max-step-gib); its "
                              f"log says how much") from PolicyError(f"{need:,} bytes")

    def check_ring_set(self, site: str, origin: str, size: int) -> None:
        """Refuse to multiply a PSI ring set of more than ``max-align-rows`` points:
        a set's origin chooses what it holds, so a site colluding with the server
        can fill it with guesses of this site's ids (each one tested), and each
        point costs an elliptic-curve multiplication."""
        if size > self.max_align_rows and not self.test_bed:
            raise PolicyError(f"site {site}: the PSI set of {origin!r} has {size:,} "
                              f"identifiers; its node config allows {self.max_align_rows:,} "
                              f"(max-align-rows)")

    def check_peer_set(self, site: str, peer: str, size: int) -> None:
        """Pseudonym alignment: refuse, before this site's pseudonyms leave, a peer that
        described more than ``max-align-rows`` samples. Every site holds the group key, so a peer can bring pseudonyms of
        guesses of this site's ids; attach then tells it which are this site's, and
        this site's posteriors of those go to it. The count is the server's (one
        colluding with the peer can hide it: PSI does not depend on it)."""
        if size > self.max_align_rows and not self.test_bed:
            raise PolicyError(f"site {site}: peer {peer!r} described {size:,} samples "
                              f"to align; its node config allows "
                              f"{self.max_align_rows:,} (max-align-rows)")

    def check_rows(self, site: str, rows: int) -> None:
        """Refuse a secure run at describe where ``min-rows`` is more than the site's
        training rows: no plan could pass :meth:`check_plan` (found at attach, late)."""
        if self.min_rows > rows:
            raise PolicyError(f"site {site}: its node config's min-rows = {self.min_rows} "
                              f"is more than its {rows} training rows, so no plan can "
                              f"train that many in a window; lower min-rows in its node "
                              f"config (nothing was sent)")

    def check_plan(self, site: str, own_rows: np.ndarray,
                   shared: Mapping[str, np.ndarray]) -> None:
        """Refuse a secure run's plan in which a window's replies would describe too
        few of the site's samples (the server picks batch size and exchange period).

        ``own_rows[w]``: how many of the site's rows window ``w`` trains; its metrics
        are sums over them, each modality's NLL too (a site file holds each of its
        modalities at every one of its rows). ``shared[m][w]``: of those, the rows
        holding modality ``m``, whose weights the site shares (masked FedAvg): a
        window of none would send back the weights the site was given, and were
        every holder but one in that case, the masked mean would be that one's weights."""
        low = (own_rows > 0) & (own_rows < self.min_rows)
        if low.any():
            w = int(np.flatnonzero(low)[0])
            raise PolicyError(
                f"site {site}: the plan trains {int(own_rows[w])} of its rows in window "
                f"{w} ({int(low.sum())} of {len(own_rows)} windows below the site's "
                f"min-rows = {self.min_rows}); use larger batches or exchange = \"round\"")
        floor = max(1, self.min_rows)
        for m, rows in sorted(shared.items()):
            low = rows < floor
            if low.any():
                w = int(np.flatnonzero(low)[0])
                raise PolicyError(
                    f"site {site}: the plan trains {int(rows[w])} of its rows with "
                    f"modality {m!r} in window {w} ({int(low.sum())} of {len(rows)} "
                    f"windows); a site that shares {m!r}'s weights trains it on at "
                    f"least {floor} row(s) in every window, or the masked mean could "
                    f"single out another holder's weights. With several holders of a "
                    f"modality use exchange = \"round\" (or \"steps\" with windows "
                    f"long enough)")

    def trusted(self, site: str, directory: Mapping[str, SitePublicKeys]
                ) -> dict[str, SitePublicKeys]:
        """The directory entries this site accepts: itself and its pinned peers,
        each matching its pinned fingerprint (all of them without ``peers``)."""
        try:
            return pinned_entries(self.peers, site, directory)
        except ValueError as err:
            raise PolicyError(f"site {site}: {err}") from None
