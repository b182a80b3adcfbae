"""The deployment site the client tests answer messages as."""

from __future__ import annotations

import pytest


@pytest.fixture
def plain_site(tiny_polymnist, tmp_path):
    """A plaintext deployment site's node config over real site files (it holds m0)."""
    from mmvm.data.sites import site_layout, split_sites

    layout = site_layout("vertical", ["m0", "m1", "m2"])
    assert layout[0].name == "site-m0"
    split_sites([tiny_polymnist / "train.parquet", tiny_polymnist / "test.parquet"],
                tmp_path / "data", layout)
    return {"data": str(tmp_path / "data" / "site-m0"), "state": str(tmp_path / "st")}
