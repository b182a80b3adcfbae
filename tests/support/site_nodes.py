"""Three vertical sites with real files, keys and a public key directory, and the
node configs ``mmvm site check`` is given for them (tests/cli/test_site_*.py); and
:func:`describe`, a run's first message to a deployment site as its ClientApp
answers it (tests/client)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmvm.config import config_digest, load_config
from mmvm.data.sites import site_layout, split_sites
from mmvm.secure.keys import SiteKeys, save_public_directory

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "polymnist_cpu.toml")
SITES = ("site-a", "site-b", "site-c")
DIGEST = config_digest(load_config(CONFIG))  # the experiment the sites pin


def three_sites(tiny_polymnist: Path, tmp_path: Path) -> dict:
    """Three vertical sites' files, every site's keys, the directory."""
    layout = [dataclasses.replace(s, name=n) for s, n in
              zip(site_layout("vertical", ["m0", "m1", "m2"]), SITES, strict=True)]
    split_sites([tiny_polymnist / "train.parquet", tiny_polymnist / "test.parquet"],
                tmp_path / "data", layout)
    keys = {n: SiteKeys.generate(n) for n in SITES}
    for n, k in keys.items():
        k.save(tmp_path / "keys" / n / "site_keys.json")
    save_public_directory(tmp_path / "keys" / "public_keys.json",
                          {n: k.public for n, k in keys.items()})
    return {"root": tmp_path, "keys": keys}


def node_config(fed: dict, site: str = "site-a", **extra) -> dict:
    """A good secure site's node config for ``site``, changed by ``extra`` (None
    drops a key)."""
    root = fed["root"]
    others = ";".join(f"{n}={k.public.fingerprint}" for n, k in fed["keys"].items()
                      if n != site)
    nc = {"site": site, "data": str(root / "data" / site),
          "keys": str(root / "keys" / site / "site_keys.json"),
          "directory": str(root / "keys" / "public_keys.json"), "peers": others,
          "state": str(root / "state" / site), "require-psi": "true",
          # vertical: its modality alone (a site of another name: none listed)
          "holders": f"m{SITES.index(site)}={site}" if site in SITES else None,
          "experiment": DIGEST}
    nc.update(extra)
    if nc.get("keys") is None and "holders" not in extra:  # a plaintext site's
        nc["holders"] = None
    return {k: v for k, v in nc.items() if v is not None}


def findings(check, item: str, status: str) -> list[str]:
    """The details of ``check``'s findings of ``item`` with ``status``."""
    return [f.detail for f in check.findings if f.item == item and f.status == status]


def describe(nc: dict, run_id: int = 7):
    """The reply (a RecordDict) or refusal (one line) of the site of node config ``nc``
    to run ``run_id``'s describe message, under the app's default run config."""
    from flwr.app import Context, RecordDict

    from client import site_node
    from mmvm.federation.messages import DescribeRequest
    from mmvm.federation.settings import app_run_config
    from wire.records import to_record

    context = Context(run_id=run_id, node_id=1, node_config=nc, state=RecordDict(),
                      run_config=app_run_config())
    return site_node.answer("describe", to_record(DescribeRequest()), context)
