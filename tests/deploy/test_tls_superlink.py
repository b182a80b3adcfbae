"""A real SuperLink with TLS and SuperNode authentication (starts processes).

Registers one site's key with ``flwr supernode register``; the SuperNode holding
it connects, one holding an unregistered key is refused. About 30 s.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from deploy import make_keys
from mmvm.cli.site_findings import ERROR, OK, NodeCheck
from mmvm.cli.site_link import check_superlink
from tests.support.fleet import Fleet
from tests.support.processes import wait_for_log

BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]


def _online_nodes(fleet: Fleet) -> dict[int, str]:
    res = fleet.flwr("supernode", "list", "mmvm", "--format", "json")
    doc = json.loads(res.stdout)  # {"success": true, "nodes": [{"node-id", "status"}]}
    return {int(n["node-id"]): n["status"] for n in doc["nodes"]}


def test_tls_and_supernode_auth(tmp_path):
    keys = tmp_path / "keys"
    assert make_keys.main(["--out", str(keys), "--sites", "a,b"]) == 0
    ca = keys / "ca.crt"
    fleet = Fleet(tmp_path / "fleet", bin_dir=BIN)
    try:
        link = fleet.start_superlink(certs=keys, auth=True)
        assert "Uvicorn running on https://" in link.process.log_text()
        # what mmvm site check --superlink finds: verified by the CA, not by another
        check = NodeCheck("a")
        check_superlink(check, link.address, str(ca))
        assert [f.status for f in check.findings] == [OK], check.findings
        other = tmp_path / "other"
        make_keys.write_all(make_keys.pki_files(other, ["localhost"]), force=False)
        check_superlink(check, link.address, str(other / "ca.crt"))
        assert check.findings[-1].status == ERROR
        assert f"does not verify against {other / 'ca.crt'}" in check.findings[-1].detail
        fleet.write_connection("mmvm", link, root_certificates=ca)
        out = fleet.register(keys / "sites" / "a" / "a.pub", "mmvm")
        assert "registered successfully" in out, out

        good = fleet.start_supernode("a", link, auth_key=keys / "sites" / "a" / "a",
                                     root_certificates=ca, node_config='site="a"')
        bad = fleet.start_supernode("b", link, auth_key=keys / "sites" / "b" / "b",
                                    root_certificates=ca, node_config='site="b"',
                                    max_retries=1)
        assert wait_for_log(good.log, ["SuperNode ID:"], 90, good.popen), (
            good.log_text())
        refused = wait_for_log(bad.log, ["Failed to activate SuperNode"], 90, bad.popen)
        assert refused, bad.log_text()
        bad.popen.wait(60)
        assert bad.popen.returncode != 0
        assert good.popen.poll() is None, good.log_text()
        assert "No SuperNode found with the given public key" in link.process.log_text()
        nodes = _online_nodes(fleet)
        assert len(nodes) == 1 and list(nodes.values()) == ["online"], nodes
    finally:
        fleet.stop()
    assert all(p.popen.poll() is not None for p in fleet.processes)
