"""A site: its own modalities' encoders/decoders trained on its own rows.

The site never sees another site's data, only the other modalities' posterior
parameters (mu, logvar) for the samples of the current window. For each step it
computes ``mmvm.objectives.site_loss`` on the batch rows it holds, scaled so that the
gradient equals the centralized one (the centralized loss is a mean over all B rows
of the batch), and applies its own Adam step. Nothing here knows about Flower.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmvm.checkpoint import atomic_write_bytes
from mmvm.config import ExperimentConfig
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.store import DataError, read_site_meta
from mmvm.federation.delta import PosteriorCache
from mmvm.federation.plan import exchange_plan
from mmvm.federation.posteriors import Posteriors, PosteriorError
from mmvm.noise import modality_noise
from mmvm.objectives import alpha_schedule, site_loss
from mmvm.training import TrainingDivergedError, build_model, resolve_device

FEDERATED_METHODS = ("mmvm", "independent")


@dataclass
class StepSpec:
    """One step of a window, as the server sends it."""

    step: int
    sample_ids: list[str]  # the full batch (B ids), centralized order


class Site:
    """State of one site: data, model, optimizer, alignment with the federation."""

    def __init__(self, cfg: ExperimentConfig, name: str, train_path: str | Path,
                 test_path: str | Path | None = None, device: str = "auto") -> None:
        if cfg.model.method not in FEDERATED_METHODS:
            raise ValueError(
                f"method {cfg.model.method!r} cannot train federated: its joint posterior "
                f"needs every encoder in one graph; use one of {list(FEDERATED_METHODS)} "
                f"(the aggregated baselines train centrally with `mmvm train`)")
        if cfg.data.schedule != "permutation":
            raise ValueError(f"data.schedule = {cfg.data.schedule!r}: federated sites follow "
                             f"the server's shared permutation schedule; use 'permutation'")
        self.cfg, self.name = cfg, name
        self.global_names = [m.name for m in cfg.model.modalities]
        held = read_site_meta(train_path)["tensors"]
        self.names = [m for m in self.global_names if m in held]
        if not self.names:
            raise DataError(f"{train_path}: site {name!r} holds none of the configured "
                            f"modalities {self.global_names} (file has {list(held)})")
        self.train_path, self.test_path = str(train_path), test_path and str(test_path)
        if cfg.data.streaming:  # a site's data need not fit in memory
            from mmvm.data.streaming import StreamingDataset

            self.data = StreamingDataset(train_path, self.names, cfg.data.label,
                                         cache_row_groups=cfg.data.cache_row_groups)
        else:
            self.data = MultimodalDataset.from_parquet(train_path, self.names, cfg.data.label)
        self.device = resolve_device(cfg.train.device)
        self.model = build_model(cfg, self.names).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.alpha_at = alpha_schedule(cfg.train.alpha_schedule, cfg.train.alpha_start,
                                       cfg.train.alpha, cfg.train.alpha_steps)
        self.windows_done = 0
        self.global_ids: list[str] = []
        self.plan: list = []
        self.plan_args: dict = {}
        self.float16 = False  # send own posteriors as float16
        self.shared: list[str] = []  # own modalities other sites also hold (FedAvg)
        self.delta_tol: float | None = None  # event-triggered exchange (delta.py)
        self.sent_cache = PosteriorCache()  # own rows as last sent
        self.others_cache = PosteriorCache()  # other modalities' rows as last received

    # ------------------------------------------------------------------ identity
    def describe(self) -> dict:
        return {"site": self.name, "modalities": self.names, "n": len(self.data),
                "sample_ids": self.data.sample_ids,
                "labelled": self.data.labels is not None}

    def attach(self, global_ids: list[str], plan_args: dict) -> None:
        """Adopt the federation's aligned id order and exchange plan (from the server).

        ``plan_args`` are the keyword arguments of ``exchange_plan`` except ``n``; the
        site derives the batch schedule itself, so batches never travel.
        """
        self.global_ids = list(global_ids)
        self.plan_args = dict(plan_args)
        self.plan = exchange_plan(len(self.global_ids), **self.plan_args)

    def window_ids(self, index: int) -> list[str]:
        """Ids of the rows window ``index`` trains on (empty past the last window)."""
        if index >= len(self.plan):
            return []
        return [self.global_ids[int(r)] for r in self.plan[index].rows]

    # ------------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(self, sample_ids: list[str] | None = None) -> dict[str, Posteriors]:
        """Own posteriors for the ids this site holds among ``sample_ids`` (default all)."""
        ids = self.data.sample_ids if sample_ids is None else sample_ids
        rows = self._held_rows(ids)
        out: dict[str, Posteriors] = {}
        if len(rows) == 0:
            return out
        batch = self.data.batch(rows)
        for j, m in enumerate(self.names):
            keep = batch["mask"][:, j]
            if not bool(keep.any()):
                continue
            mu, lv = self.model.encode_modality(m, batch["x"][m][keep].to(self.device))
            ids_m = [self.data.sample_ids[int(r)] for r in torch.as_tensor(rows)[keep]]
            out[m] = Posteriors(ids_m, mu.cpu().numpy(), lv.cpu().numpy())
        return out

    def _held_rows(self, sample_ids: list[str]) -> np.ndarray:
        data = self.data
        return np.array([data.position(s) for s in sample_ids if data.contains(s)],
                        dtype=np.int64)

    # ------------------------------------------------------------------ train
    def train_window(self, index: int, others: dict[str, Posteriors]) -> dict:
        """Run window ``index`` of the plan with the other modalities' posteriors fixed."""
        if not 0 <= index < len(self.plan):
            raise ValueError(f"site {self.name}: window {index} is not in the plan "
                             f"({len(self.plan)} windows); was the site attached?")
        ids = self.global_ids
        steps = [StepSpec(s.step, [ids[int(r)] for r in s.rows])
                 for s in self.plan[index].steps]
        unknown = set(others) - set(self.global_names)
        if unknown:
            raise PosteriorError(f"site {self.name}: posteriors for unknown modalities "
                                 f"{sorted(unknown)}")
        lookup = {m: {s: i for i, s in enumerate(p.sample_ids)} for m, p in others.items()}
        self.model.train()
        sums = {"rec_nll": 0.0, "reg": 0.0, "rows": 0, "steps": 0}
        for spec in steps:
            m = self._step(spec, others, lookup)
            for k in sums:
                sums[k] += m[k]
        self.windows_done += 1
        return sums

    def _step(self, spec: StepSpec, others, lookup) -> dict:
        B, D, M = len(spec.sample_ids), self.model.latent_dim, len(self.global_names)
        where = [i for i, s in enumerate(spec.sample_ids) if self.data.contains(s)]
        if not where:
            return {"rec_nll": 0.0, "reg": 0.0, "rows": 0, "steps": 1}
        ids = [spec.sample_ids[i] for i in where]
        batch = self.data.batch(self.data.rows_of(ids))
        mask = torch.zeros(len(ids), M, dtype=torch.bool)
        mu_all = torch.zeros(len(ids), M, D)
        lv_all = torch.zeros(len(ids), M, D)
        for g, m in enumerate(self.global_names):
            if m in self.names:
                mask[:, g] = batch["mask"][:, self.names.index(m)]
            elif m in others:
                idx = [lookup[m].get(s, -1) for s in ids]
                have = torch.tensor([i >= 0 for i in idx])
                if bool(have.any()):
                    src = torch.tensor([i for i in idx if i >= 0])
                    mu_all[have, g] = torch.from_numpy(others[m].mu[src])
                    lv_all[have, g] = torch.from_numpy(others[m].logvar[src])
                    mask[have, g] = True
        eps = torch.stack([modality_noise(self.cfg.train.seed, spec.step, g, B, D)[where]
                           for g in range(M)], 1)
        dev = self.device
        terms = site_loss(self.model, {k: v.to(dev) for k, v in batch["x"].items()},
                          mask.to(dev), mu_all.to(dev), lv_all.to(dev), self.global_names,
                          self.cfg.model.method, self.cfg.train.beta,
                          self.alpha_at(spec.step), eps.to(dev))
        loss = terms.loss * (len(ids) / B)  # the centralized loss is a mean over B rows
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"site {self.name}: loss {loss.item()} at step "
                                        f"{spec.step}; nothing of this step is applied")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        w = self.model.likelihood_weights.to(terms.rec_ll)
        own = [self.global_names.index(n) for n in self.names]
        return {"rec_nll": float(-(terms.rec_ll[:, own] * w).sum().item()),
                "reg": float(terms.reg.sum().item()), "rows": len(ids), "steps": 1}

    # ------------------------------------------------------------------ shared weights
    def weights(self, modality: str) -> dict[str, np.ndarray]:
        """Encoder and decoder parameters of ``modality`` (for FedAvg among holders)."""
        sd = {f"encoders.{modality}.{k}": v for k, v in
              self.model.encoders[modality].state_dict().items()}
        sd.update({f"decoders.{modality}.{k}": v for k, v in
                   self.model.decoders[modality].state_dict().items()})
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        state = self.model.state_dict()
        unknown = set(arrays) - set(state)
        if unknown:
            raise ValueError(f"site {self.name}: unknown parameters {sorted(unknown)[:3]}")
        for k, v in arrays.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(f"site {self.name}: parameter {k} has shape {v.shape}, "
                                 f"expected {tuple(state[k].shape)}")
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()},
                                   strict=False)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Model, optimizer and counters, written atomically."""
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "windows_done": self.windows_done, "names": self.names,
                    "global_ids": self.global_ids, "plan_args": self.plan_args,
                    "float16": self.float16, "shared": self.shared,
                    "delta_tol": self.delta_tol, "sent_cache": self.sent_cache.state(),
                    "others_cache": self.others_cache.state()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    def restore(self, path: str | Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["names"] != self.names:
            raise ValueError(f"{path}: saved for modalities {state['names']}, this site "
                             f"holds {self.names}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.windows_done = int(state["windows_done"])
        self.float16, self.shared = bool(state["float16"]), list(state["shared"])
        self.delta_tol = state.get("delta_tol")
        self.sent_cache = PosteriorCache.from_state(state.get("sent_cache", {}))
        self.others_cache = PosteriorCache.from_state(state.get("others_cache", {}))
        if state["global_ids"]:
            self.attach(state["global_ids"], state["plan_args"])


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_site(site: Site, max_probe_train: int = 10_000) -> dict:
    """What a site can measure on its own data: a latent probe per own modality
    (logistic regression on mu, train rows -> test rows) and the test reconstruction
    NLL (decoding the posterior mean). Needs the site's test file and labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict = {"site": site.name, "modalities": site.names}
    if not site.test_path:
        return out
    test = MultimodalDataset.from_parquet(site.test_path, site.names, site.cfg.data.label)
    site.model.eval()
    train_mu = _means(site, site.data, max_probe_train)
    test_mu = _means(site, test, 0)
    for j, m in enumerate(site.names):
        rec = 0.0
        rows = torch.nonzero(test.mask[:, j]).flatten()
        for chunk in rows.split(512):
            b = test.batch(chunk)
            x = b["x"][m].to(site.device)
            mu, _ = site.model.encode_modality(m, x)
            ll = site.model.log_likelihood(m, x, site.model.decode(m, mu))
            rec -= float(ll.sum()) * float(site.model.specs[m].weight)
        out[f"recon_nll/{m}"] = rec / max(len(rows), 1)
        (tr_x, tr_y), (te_x, te_y) = train_mu[m], test_mu[m]
        if len(tr_y) and (tr_y >= 0).all() and len(set(tr_y.tolist())) > 1 and len(te_y):
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000))
            clf.fit(tr_x, tr_y)
            out[f"probe/{m}"] = float(clf.score(te_x, te_y))
    out["n_test"] = len(test)
    return out


def _means(site: Site, data: MultimodalDataset, limit: int) -> dict:
    n = len(data) if not limit else min(limit, len(data))
    res = {}
    for j, m in enumerate(site.names):
        rows = torch.nonzero(data.mask[:n, j]).flatten()
        mus, ys = [], []
        for chunk in rows.split(512):
            b = data.batch(chunk)
            mu, _ = site.model.encode_modality(m, b["x"][m].to(site.device))
            mus.append(mu.cpu().numpy())
            ys.append(b["label"].numpy() if "label" in b else np.full(len(chunk), -1))
        res[m] = (np.concatenate(mus) if mus else np.zeros((0, site.model.latent_dim)),
                  np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64))
    return res
