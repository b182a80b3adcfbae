"""What a deployed site checks of the tables a run makes it hold, against its node
config's ``max-step-gib`` (:class:`mmvm.federation.policy.SitePolicy`)."""

from __future__ import annotations

import os

from mmvm.data.store import read_site_meta
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site import Site
from mmvm.footprint import table_bytes


def check_tables(site: Site, policy: SitePolicy) -> None:
    """The posterior tables a window makes the site hold (its rows of the largest
    window, every modality of the run) and its final evaluation's latents (all its
    train and test rows, its own modalities), against ``max-step-gib``."""
    if policy.test_bed:
        return
    widest = int(site.own_rows()[:, 0].max(initial=0))
    if site.linked().delta_tol is not None:  # event-triggered: every row received
        widest = len(site.data)  # or sent stays cached, for every modality
    policy.check_held(site.name, f"a window's posteriors ({widest:,} rows x "
                      f"{len(site.global_names)} modalities)",
                      table_bytes(site.cfg, widest, len(site.global_names)))
    test = site.test_path if site.test_path and os.path.isfile(site.test_path) else ""
    rows = len(site.data) + (read_site_meta(test)["num_rows"] if test else 0)
    policy.check_held(site.name, "the final evaluation's latents (its train and "
                      "test rows; the server is not told how many)",
                      table_bytes(site.cfg, rows, len(site.names)))
