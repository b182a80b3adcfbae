"""docs/deploy-two-hospitals.md, run as written on 127.0.0.1 (paths aside).

Hospital A holds the frontal chest X-rays, hospital B the lateral views of the same
studies. From one tiny tree in the published MIMIC-CXR-JPG layout
(tests/support/published.py) the test follows the guide's steps with real processes:

1. each site holds only its own view's JPEGs, runs ``mmvm data prepare mimic_cxr ...
   --size 64 --view frontal`` (A) or ``--view lateral`` (B), then ``mmvm data check``
   on its files (exit status 0); both sites hold the same sample ids;
2. keys as in production: the operator's ``make_keys --pki-only``, each site's
   ``make_keys --site``, the operator's ``--directory``; each site checks the
   directory's fingerprints with the guide's one-liner;
3. the SuperLink with TLS, SuperNode authentication and ``--database``; both keys
   registered (``flwr supernode register``); both SuperNodes (``--isolation
   process``) with the guide's node configs (``site``, ``data``, ``keys``,
   ``directory``, ``state``, ``peers``): A's on the command line, B's in a TOML file;
   next to each, the fork-server SuperExec pinned to the bundle hash ``mmvm site
   check --config`` printed, as the guide starts it for two sites on one machine;
   ``flwr supernode list`` shows both online;
4. ``flwr run`` with the guide's run config (``configs/mimic_cxr_64.toml``,
   ``num-sites=2 eval-data='' secure=true align='psi' collect-model=false``); the run ends
   ``finished:completed`` (``flwr ls``), ``results.json`` names both sites and says
   both kept their weights;
5. the guide's Python snippet loads hospital A's state file into a
   ``MultimodalVAE`` and encodes one of A's JPEGs (the snippet is read from the
   guide, its three paths replaced).

The strings the guide gives for the node configs and the run config are checked to
be in the guide, so the two cannot drift apart. Every process started is stopped
in ``finally``. About 2 minutes on 2 idle cores (2.5-3 with Flower's stock
SuperExec, which the guide ran before it pinned the reviewed release).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmvm.config import config_digest, load_config
from mmvm.data.store import read_site_table
from tests.support.deployment import REPLY_POLL, TASK_POLL
from tests.support.fleet import Fleet
from tests.support.processes import free_port, wait_for_log, wait_for_port
from tests.support.published import mimic_studies, mimic_tree

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploy-two-hospitals.md"
BIN = Path(sys.executable).parent
SITES = {"hospital-a": "frontal", "hospital-b": "lateral"}
# the experiment both hospitals pin (node config experiment=): the run's config
DIGEST = config_digest(load_config(ROOT / "configs" / "mimic_cxr_64.toml"))
VIEW_OF = {dicom: "lateral" if view in ("LATERAL", "LL") else "frontal"
           for studies in mimic_studies(40).values() for images in studies.values()
           for dicom, view in images}
# the guide's SuperExec for two sites on one machine (section 4), on its SuperNode's port
SUPEREXEC = ("python -m deploy.superexec_fork --insecure --runtime-api-address "
             "127.0.0.1:{port} --threads 1 --allow-fab {fab}")
RUN_CONFIG = ("config='configs/mimic_cxr_64.toml' num-sites=2 eval-data='' "
              "secure=true align='psi' collect-model=false")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]


def _sh(fleet: Fleet, *argv: str | Path) -> subprocess.CompletedProcess:
    """One of the guide's commands, with the fleet's environment; output captured."""
    res = subprocess.run([str(a) for a in argv], env=fleet.env, cwd=fleet.workdir,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{argv} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def _node_config(site: str, data: Path, keys: Path, state: Path, peer: str,
                 fingerprint: str, digest: str = DIGEST) -> dict[str, str]:
    """The guide's node config of ``site`` (section 4), key -> value; ``digest``:
    the experiment it may run (the run's config)."""
    return {"site": site, "data": str(data), "keys": str(keys / "site_keys.json"),
            "directory": str(keys / "public_keys.json"), "state": str(state),
            "peers": f"{peer}={fingerprint}", "require-psi": "true",
            "eval-labels": "label.no_finding", "holders": f"{SITES[site]}={site}",
            "experiment": digest}


def _inline(nc: dict[str, str]) -> str:
    """Hospital A's form: one ``--node-config`` string."""
    return " ".join(f'{k}="{v}"' for k, v in nc.items())


def _toml(nc: dict[str, str]) -> str:
    """Hospital B's form: a TOML file that ``--node-config`` names."""
    return "".join(f'{k} = "{v}"\n' for k, v in nc.items())


def _generic(site: str) -> dict[str, str]:
    """The node config as the guide prints it."""
    peer = next(p for p in SITES if p != site)
    return _node_config(site, Path(f"/srv/mmvm/mimic/{SITES[site]}"),
                        Path(f"/etc/mmvm/{site}"), Path(f"/var/lib/mmvm/{site}"), peer,
                        f"<fingerprint of {peer}>", "<digest mmvm site check prints>")


def _snippet(guide: str) -> str:
    """The guide's model-loading snippet (the python block after its marker)."""
    m = re.search(r"<!-- test: load-model -->\s*```python\n(.*?)```", guide, re.S)
    assert m, "the guide lost its load-model snippet"
    return m.group(1)


def test_two_hospital_walkthrough(tmp_path):
    guide = GUIDE.read_text()
    fleet = Fleet(tmp_path / "operator", bin_dir=BIN)
    python, mmvm = BIN / "python", BIN / "mmvm"
    mimic_tree(tmp_path / "published", size=(40, 48), extra=40, labels="random")
    site_dir = {s: tmp_path / s for s in SITES}
    try:
        # -- 1. data, at each site ------------------------------------------------
        data = {}
        for site, view in SITES.items():
            out, src = site_dir[site] / "mimic", site_dir[site] / "published"
            shutil.copytree(tmp_path / "published", src)
            for jpg in src.rglob("*.jpg"):  # the site holds its own view's images only
                if VIEW_OF[jpg.stem] != view:
                    jpg.unlink()
            _sh(fleet, mmvm, "data", "prepare", "mimic_cxr", src, "--out", out,
                "--size", "64", "--seed", "0", "--view", view, "--quiet")
            assert sorted(p.name for p in out.iterdir()) == [view]
            data[site] = out / view
            res = _sh(fleet, mmvm, "data", "check", data[site] / "train.parquet",
                      data[site] / "test.parquet")
            assert "1x64x64" in res.stdout and view in res.stdout, res.stdout
        ids = {s: read_site_table(d / "train.parquet").sample_ids for s, d in data.items()}
        assert ids["hospital-a"] == ids["hospital-b"] and len(ids["hospital-a"]) > 16

        # -- 2. keys: operator, each site, the directory -------------------------------
        pki = tmp_path / "operator" / "pki"
        _sh(fleet, python, "-m", "deploy.make_keys", "--out", pki, "--pki-only",
            "--hosts", "localhost")
        fingerprint, keys = {}, {}
        for site in SITES:
            keys[site] = site_dir[site] / "keys"
            res = _sh(fleet, python, "-m", "deploy.make_keys", "--out", keys[site],
                      "--site", site)
            m = re.search(rf"site {site}: fingerprint ([0-9a-f ]+)\n", res.stdout)
            assert m, res.stdout
            fingerprint[site] = m.group(1).replace(" ", "")  # read out by phone
        _sh(fleet, python, "-m", "deploy.make_keys", "--out", pki, "--directory",
            *(keys[s] / "site_public.json" for s in SITES))
        for site in SITES:  # the operator sends ca.crt and public_keys.json
            shutil.copy(pki / "ca.crt", keys[site] / "ca.crt")
            shutil.copy(pki / "public_keys.json", keys[site] / "public_keys.json")
            res = _sh(fleet, python, "-c",
                      "from mmvm.secure.keys import load_public_directory as l; "
                      "[print(n, p.fingerprint) for n, p in "
                      f"l('{keys[site] / 'public_keys.json'}').items()]")
            listed = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1].replace(" ", "")
                      for ln in res.stdout.splitlines()}
            assert listed == fingerprint  # each site compares with what it was told

        # -- 3. the SuperLink, registrations, the SuperNodes --------------------------
        port = free_port()
        link = fleet.start("superlink", [
            str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
            "--ssl-ca-certfile", str(pki / "ca.crt"),
            "--ssl-certfile", str(pki / "server.pem"),
            "--ssl-keyfile", str(pki / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(tmp_path / "operator" / "superlink.db")])
        wait_for_port("127.0.0.1", port, 60, link.popen)
        fleet.write_connection("mmvm", f"127.0.0.1:{port}",
                               root_certificates=pki / "ca.crt")
        for site in SITES:  # the operator received <site>.pub
            out = fleet.register(keys[site] / f"{site}.pub", "mmvm")
            assert "registered successfully" in out, out
        assert f"--node-config '{_inline(_generic('hospital-a'))}'" in guide
        assert "flower-supernode --isolation process --superlink" in guide
        assert SUPEREXEC.format(port=9094, fab="...") in guide
        assert _toml(_generic("hospital-b")) in guide
        # the bundle both hospitals pin: this checkout's, as the operator submits it
        res = _sh(fleet, mmvm, "site", "check", "--config",
                  ROOT / "configs" / "mimic_cxr_64.toml")
        fab = re.search(r"--allow-fab ([0-9a-f]{64})", res.stdout).group(1)
        nodes, state = {}, {}
        for site in SITES:
            peer = next(p for p in SITES if p != site)
            state[site] = site_dir[site] / "state"
            nc = _node_config(site, data[site], keys[site], state[site], peer,
                              fingerprint[peer])
            if site == "hospital-a":
                text = _inline(nc)
            else:
                text = str(keys[site] / "node-config.toml")
                Path(text).write_text(_toml(nc))
            res = _sh(fleet, mmvm, "site", "check", "--config",
                      ROOT / "configs" / "mimic_cxr_64.toml", "--node-config", text)
            assert f"mmvm site check: {site}: ready; 0 warning(s)" in res.stdout, \
                res.stdout
            node_port = free_port()
            nodes[site] = fleet.start_supernode(
                site, f"127.0.0.1:{port}", auth_key=keys[site] / site,
                root_certificates=keys[site] / "ca.crt", port=node_port,
                node_config=text, extra_args=["--isolation", "process"])
            fleet.start(f"superexec-{site}", [str(python), *SUPEREXEC.format(
                port=node_port, fab=fab).split()[1:], "--task-poll-interval", str(TASK_POLL)])
        for proc in nodes.values():
            assert wait_for_log(proc.log, ["SuperNode ID:"], 90, proc.popen), \
                proc.log_text()
        listed = fleet.flwr("supernode", "list", "mmvm", "--format", "json")
        nodes_json = json.loads(listed.stdout)["nodes"]
        assert [n["status"] for n in nodes_json] == ["online", "online"], listed.stdout

        # -- 4. the run -------------------------------------------------------------
        assert f'--run-config "{RUN_CONFIG}"' in guide
        runs = tmp_path / "operator" / "runs"
        res = fleet.flwr("run", str(ROOT), "mmvm", "--stream", "--run-config",
                         f"{RUN_CONFIG} out-dir='{runs}' reply-poll={REPLY_POLL}",
                         timeout=600, check=False)
        out = res.stdout + res.stderr
        m = re.search(r"Successfully started run (\d+)", out)
        assert m, out
        run_id = m.group(1)
        ls = fleet.flwr("ls", "--run-id", run_id, "--format", "json")
        status = json.loads(ls.stdout)["runs"][0]["status"]
        assert status == "finished:completed", out
        results = json.loads((runs / f"run-{run_id}" / "results.json").read_text())
        assert sorted(v["site"] for v in results["sites"].values()) == sorted(SITES)
        assert results["windows"] == 2
        assert results["kept_weights"] == sorted(SITES)  # collect-model=false
        n = len(ids["hospital-a"])
        assert results["alignment"]["complete"] == n == results["alignment"]["samples"]
        for ev in results["evaluation"].values():  # each hospital on its test.parquet
            view = SITES[ev["site"]]
            assert ev["modalities"] == [view] and f"recon_nll/{view}" in ev, ev
            assert 0.0 <= ev[f"probe/{view}"] <= 1.0, ev  # "No Finding" probe
        # each imputed its view from the other's test posteriors, sealed to it
        # after a PSI ring over the test sets (the guide's section 5)
        assert set(results["cross_site"]["imputation"]["pairs"]) == {
            "frontal->lateral", "lateral->frontal"}, results.get("cross_site_notes")
        assert not (runs / f"run-{run_id}" / "checkpoint.pt").exists()
        for site in SITES:
            assert (state[site] / f"run-{run_id}" / f"{site}.pt").is_file()
            # its own model's pictures beside it (guide section 8), nothing sent
            assert (state[site] / f"run-{run_id}" / f"{site}-pictures" /
                    "generations.png").stat().st_size > 1000
            assert not (state[site] / f"run-{run_id}" / f"{site}.errors.log").exists()

        # -- 5. hospital A loads its model and encodes one of its images -----------
        jpg = next((tmp_path / "published" / "files").rglob("f4.jpg"))  # a PA view
        code = _snippet(guide)
        for name, value in (("CONFIG", ROOT / "configs" / "mimic_cxr_64.toml"),
                            ("STATE", state["hospital-a"] / f"run-{run_id}"
                             / "hospital-a.pt"),
                            ("IMAGE", jpg)):
            code, n = re.subn(rf'^{name} = ".*"$', f'{name} = "{value}"', code,
                              flags=re.M)
            assert n == 1, f"the snippet has no line {name} = \"...\""
        res = _sh(fleet, python, "-c", code)
        assert "mu (1, 32) logvar (1, 32) recon (1, 1, 64, 64)" in res.stdout, res.stdout
        n = len(ids["hospital-a"])
        assert f"aligned rows {n} held here {n}" in res.stdout, res.stdout
        # ... and all its training samples at once (the guide's mmvm encode)
        assert "mmvm encode --site-state" in guide
        latents = tmp_path / "frontal-latents.parquet"
        res = _sh(fleet, mmvm, "encode", "--site-state",
                  state["hospital-a"] / f"run-{run_id}" / "hospital-a.pt", "--config",
                  ROOT / "configs" / "mimic_cxr_64.toml",
                  data["hospital-a"] / "train.parquet", "--out", latents, "--no-progress")
        table = pq.read_table(latents)
        assert table.column_names[:3] == ["sample_id", "mu.frontal", "logvar.frontal"]
        assert table.num_rows == len(ids["hospital-a"]), res.stdout
        assert table.column("mu.frontal").null_count == 0
    finally:
        fleet.stop()
        assert all(p.popen.poll() is not None for p in fleet.processes)
