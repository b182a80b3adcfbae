"""A secure simulation's keys, checked before Flower starts: each simulated site reads
``keys-dir/sites/<its name>/site_keys.json``, and a site is named after its
``site-dirs`` folder (or the default layout). Keys made for other names failed every
site at its first message, ~30 s in, one FileNotFoundError traceback per site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy import make_keys
from mmvm.cli.run_config import check_run_config
from mmvm.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _site_dirs(tmp_path) -> str:
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(0)
    dirs = []
    for name in ("site-ratA", "site-ratB"):
        for m in ("m0", "m1", "m2"):  # the config's images
            np.save(tmp_path / f"{m}.npy", rng.integers(0, 256, (20, 3, 28, 28), np.uint8))
        prepare_arrays(tmp_path / name, {m: tmp_path / f"{m}.npy" for m in ("m0", "m1", "m2")},
                       ids=None)
        dirs.append(str(tmp_path / name))
    return ",".join(dirs)


def test_keys_made_for_other_site_names_are_refused_before_flower(tmp_path):
    dirs = _site_dirs(tmp_path)
    keys = tmp_path / "keys"
    assert make_keys.main(["--out", str(keys), "--sites", "ratA,ratB"]) == 0
    text = f"num-sites=2 site-dirs='{dirs}' eval-data='' secure=true keys-dir='{keys}'"
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, text, local=True)
    said = str(info.value)
    assert "has no keys of the simulated sites ['site-ratA', 'site-ratB']" in said
    assert "it holds ['ratA', 'ratB']" in said
    # a folder with keys in it (a deployment's): the command makes another, as
    # make_keys refuses to write over it
    assert f"--out {keys}-simulation --sites site-ratA,site-ratB` and keys-dir=" in said
    assert make_keys.main(["--out", f"{keys}-simulation", "--sites",
                           "site-ratA,site-ratB"]) == 0
    check_run_config(ROOT, text.replace(str(keys), f"{keys}-simulation"), local=True)
    with pytest.raises(ConfigError, match="a simulation's sites read their keys from "
                                          "keys-dir; make them with"):
        check_run_config(ROOT, text.replace(f"keys-dir='{keys}'", ""), local=True)
    good = tmp_path / "good"
    assert make_keys.main(["--out", str(good), "--sites", "site-ratA,site-ratB"]) == 0
    check_run_config(ROOT, text.replace(str(keys), str(good)), local=True)
