"""A site's own pictures at the end of a federated run, kept beside its state.

A deployed hospital holds its encoders and decoders, not an assembled model (that
needs every site's weights, which a secure site never hands in), so the server's
``generations.png`` is not drawn and ``mmvm evaluate`` has no model to read: the
walkthrough of 2026-12-05 found no picture of its own training anywhere. At its
final evaluation the site draws, from its own model and its own test file,
``<state>/run-<id>/<site>-pictures/generations.png`` (image modalities: test samples,
their reconstructions and generations among its own modalities) or ``latents.png``
(vectors, coloured by label). Nothing of it leaves the site.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmvm.data import open_dataset
from mmvm.data.label_names import label_names_for
from mmvm.federation.site import Site
from mmvm.run_pictures import run_picture


def draw_site_pictures(site: Site, folder: str | Path) -> dict[str, Path]:
    """The site's pictures in ``folder/<site>-pictures/`` (mode 0700); none without a
    test file, or for unlabelled vectors."""
    if not site.test_path:
        return {}
    own = [m for m in site.cfg.model.modalities if m.name in site.names]
    cfg = dataclasses.replace(site.cfg, model=dataclasses.replace(site.cfg.model,
                                                                  modalities=own))
    out = Path(folder) / f"{site.name}-pictures"
    out.mkdir(mode=0o700, exist_ok=True)
    test = open_dataset(site.test_path, site.names, site.cfg.data)
    names = label_names_for([site.test_path], site.cfg.data.label)
    return run_picture(site.model, cfg, test, out, f"{site.name}: its own model", names)
