"""The run's experiment config as a site runs it: where it trains, whether it compiles,
how it reads its files; a deployed site's node config decides them, not the run
config (:mod:`mmvm.federation.policy`). None changes what is computed, so the sites
still share the experiment's digest (:data:`mmvm.config.SITE_CHOSEN`).

A deployed site streams its files (through a decoded copy in ``<state>/decoded``,
:mod:`mmvm.data.decoded`) where its node config says ``streaming = true``, reads them
whole where it says ``false``, and, where it says nothing, streams where its files read
whole would take over a quarter of its host's memory (a whole read holds about twice
the tensors while it decodes). A run config that could choose would load a file that
fits only streamed, or write a decoded copy of the site's data to a disk of its
choosing; in a simulation (one person's test bed) the run config's ``data`` applies.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from mmvm.config import ExperimentConfig
from mmvm.data.decoded import tensor_bytes
from mmvm.data.store_limits import memory_budget
from mmvm.federation.policy import SitePolicy

WHOLE_READ_SHARE = 4  # stream where the files read whole take over 1/4 of memory


def streams(policy: SitePolicy, cfg: ExperimentConfig,
            files: Sequence[str | os.PathLike]) -> bool:
    """Whether the site reads ``files`` (its train and test files) streamed."""
    if policy.test_bed:
        return cfg.data.streaming
    return deployed_streams(policy, lambda: whole_bytes(files))


def deployed_streams(policy: SitePolicy, whole: Callable[[], int],
                     budget: Callable[[], int] | None = None) -> bool:
    """A deployed site's rule: its node config's ``streaming``, else whether its files'
    tensors (``whole()`` bytes) take over a quarter of its memory (``budget()``
    bytes, by default :func:`memory_budget`); neither is read where the node config
    decides."""
    if policy.streaming is not None:
        return policy.streaming
    return WHOLE_READ_SHARE * whole() > (budget or memory_budget)()


def whole_bytes(files: Sequence[str | os.PathLike]) -> int:
    """The bytes of the tensors in those of ``files`` that exist."""
    return sum(tensor_bytes(f) for f in files if f and Path(f).is_file())


def site_experiment(policy: SitePolicy, cfg: ExperimentConfig,
                    files: Sequence[str | os.PathLike] = ()) -> ExperimentConfig:
    """``cfg`` on the site's own ``device`` (a deployed site's node config's, by
    default ``auto``; a simulation's: the run config's),
    compiled only where it allows that, reading ``files`` as :func:`streams` says."""
    stream = streams(policy, cfg, files)
    decoded = cfg.data.decoded_dir if policy.test_bed else str(
        Path(policy.state, "decoded")) if stream and policy.state else ""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(
            cfg.train, device=policy.device or cfg.train.device,
            compile=cfg.train.compile and policy.allow_compile),
        data=dataclasses.replace(cfg.data, streaming=stream, decoded_dir=decoded))


def reading(cfg: ExperimentConfig) -> str:
    """How a site that runs ``cfg`` (from :func:`site_experiment`) reads its files: a
    line for its own journal, where its operator looks."""
    if not cfg.data.streaming:
        return "reads its files whole"
    if cfg.data.decoded_dir:
        return f"reads its files streamed, from its decoded copy in {cfg.data.decoded_dir}"
    return "reads its files streamed, by Parquet row group"
