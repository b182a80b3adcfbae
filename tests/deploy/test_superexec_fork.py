"""The fork-server SuperExec's command line (``deploy.superexec_fork``).

With real processes it runs the sites of tests/deploy/test_deployment.py (a secure
federation in which every ClientApp message must run in a forked child and the fork
servers stay up) and of test_node_faults.py (sites killed and restarted mid-run).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.superexec_fork import APP_PACKAGES, check_preload


def test_preload_refuses_the_apps_own_packages():
    assert check_preload(["numpy", "torch.nn"]) == ["numpy", "torch.nn"]
    for name in APP_PACKAGES:
        with pytest.raises(SystemExit, match="part of the app bundle"):
            check_preload([f"{name}.x"])
    with pytest.raises(SystemExit, match="no such module"):
        check_preload(["no_such_module_here"])


def test_help_lists_flower_superexec_arguments():
    res = subprocess.run([sys.executable, "-m", "deploy.superexec_fork", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--preload" in res.stdout and "--runtime-api-address" in res.stdout
