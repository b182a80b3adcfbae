"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cfg(request, tiny_polymnist, tiny_config):
    """The tiny PolyMNIST experiment, one epoch: 192 rows / 64, three one-step windows;
    a module marked ``pytest.mark.epochs(n)`` gets n epochs (3 n windows)."""
    torch.set_num_threads(1)
    marked = request.node.get_closest_marker("epochs")
    return tiny_config(tiny_polymnist, epochs=marked.args[0] if marked else 1)


@pytest.fixture(scope="module")
def trained_sites(tiny_polymnist, tmp_path_factory):
    """Three vertical sites after a plaintext run (no cross-site evaluation), put
    back before their final evaluation: what a hostile server then sends is up to
    the test."""
    from mmvm.federation.channel import PlainChannel
    from mmvm.federation.endpoint import Endpoint
    from tests.conftest import _tiny_config
    from tests.support.federate import federate, make_sites, split

    cfg = _tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path_factory.mktemp("xattack"), "vertical")
    sites = make_sites(cfg, specs, root)
    federate(cfg, {k: Endpoint(s, PlainChannel()) for k, s in sites.items()},
             exchange="step")
    return cfg, sites


@pytest.fixture
def site_before_eval(trained_sites):
    """site-m0, in the state before its evaluation, with a deployed site's policy."""
    _, sites = trained_sites
    s = next(x for x in sites.values() if x.name == "site-m0")
    s.progress.phase, s.progress.held_out, s.progress.cross_scored = "attached", "", False
    for kind in ("heldout", "evaluate"):
        s.replies.entries.pop(kind, None)
    return s
