"""mmvm.provenance: what computed a number, and what differs between two runs'."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
import torch

from mmvm.jsonfile import json_bytes
from mmvm.provenance import NUMERIC_KEYS, differences, environment, git_commit
from tests.reporting.pages import eval_result, fake_run, write_report


def test_the_environment_is_this_process_and_strict_json(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        env = environment()
    finally:
        torch.set_num_threads(threads)
    assert env["torch"] == torch.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == 1 and environment()["threads"] == threads
    assert env["numeric_variables"] == {"MKL_CBWR": "COMPATIBLE"}
    assert env["device"] == ("cpu" if not torch.cuda.is_available() else env["device"])
    assert set(NUMERIC_KEYS) <= set(env)
    assert json.loads(json_bytes(env)) == env  # plain JSON types, nothing lost
    buf = io.BytesIO()  # checkpoints hold it: a weights-only load takes no str subclass
    torch.save({"environment": env}, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["environment"] == env


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_commit_says_dirty_for_changed_code_not_for_rerun_results(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    assert git_commit(tmp_path) is None  # no checkout
    git("init", "-q")
    (tmp_path / "mmvm").mkdir()
    (tmp_path / "mmvm" / "model.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "results.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    inside = tmp_path / "mmvm"  # asked from a subfolder, as mmvm/provenance.py is
    assert git_commit(inside) == head
    (tmp_path / "benchmarks" / "results" / "results.json").write_text('{"rerun": 1}\n')
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_commit(inside) == head
    (tmp_path / "mmvm" / "model.py").write_text("x = 2\n")
    assert git_commit(inside) == head + "+dirty"


def test_differences_name_what_differs_and_who_had_which():
    a = {"torch": "2.13.0", "cpu": "AMD EPYC", "threads": 1, "numeric_variables": {}}
    assert differences({"a": a, "b": dict(a), "old": None}) == {}
    b = {**a, "torch": "2.5.1", "numeric_variables": {"MKL_CBWR": "COMPATIBLE"}}
    got = differences({"a": a, "b": b, "c": dict(a), "old": None})
    assert got == {"torch": {"2.13.0": ["a", "c"], "2.5.1": ["b"]},
                   "numeric_variables": {"none set": ["a", "c"],
                                         "MKL_CBWR=COMPATIBLE": ["b"]}}


def test_a_report_says_when_runs_were_computed_in_different_environments(tmp_path):
    """Two seeds' digits differ with the host's kernels: the page says the runs
    were not computed alike (and nothing where they were, or where runs predate it)."""
    env = {**environment(), "threads": 1}
    runs = [fake_run(tmp_path / f"mmvm-seed{s}", {**eval_result("mmvm", s, 0.9, 300.0, 0.4),
                                                  "environment": env}) for s in range(2)]
    old = fake_run(tmp_path / "mmvm-seed2", eval_result("mmvm", 2, 0.9, 300.0, 0.4))
    text, _ = write_report(tmp_path / "alike", *runs, old)
    assert "different environments" not in text
    other = fake_run(tmp_path / "mmvm-seed3", {
        **eval_result("mmvm", 3, 0.9, 300.0, 0.4),
        "environment": {**env, "torch": "2.4.0", "cpu": "Intel Xeon"}})
    text, _ = write_report(tmp_path / "differ", *runs, old, other)
    assert "computed in different environments" in text
    assert f"torch: {env['torch']} (mmvm-seed0, mmvm-seed1); 2.4.0 (mmvm-seed3)" in text
    assert "cpu: " in text and "Intel Xeon (mmvm-seed3)" in text
