"""mmvm.provenance: what computed a number, and what differs between two runs'."""

from __future__ import annotations

import html
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvm.cli import main
from mmvm.jsonfile import json_bytes
from mmvm.provenance import (
    NUMERIC_KEYS,
    differences,
    environment,
    git_commit,
    kernels,
    weights_digest,
)
from mmvm.reporting.runs import Run
from mmvm.reporting.stats import reproduced
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
    assert env["device"] == "cpu"  # the model's device, on a GPU host too
    assert environment(torch.device("cpu"))["device"] == "cpu"
    assert env["platform"].split()[0] in ("Linux", "Darwin", "Windows")  # no kernel build
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
    installed = tmp_path / "venv" / "site-packages" / "mmvm"  # untracked, in a repo
    installed.mkdir(parents=True)
    (installed / "provenance.py").write_text("")
    assert git_commit(installed) is None  # not the enclosing repository's commit


def test_no_git_process_starts_where_there_is_no_checkout(tmp_path, monkeypatch):
    """An installed package (a site's venv outside any checkout) starts no git."""
    if any((p / ".git").exists() for p in tmp_path.parents):
        pytest.skip("the temporary folder is inside a git checkout")

    def refused(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "run", refused)
    assert git_commit(tmp_path / "venv" / "site-packages" / "mmvm") is None


def test_the_weights_digest_tells_weights_apart_and_ignores_the_rest():
    """Equal weights, equal digest, whatever else a checkpoint holds; one element, a
    dtype or a name changed: another digest (bfloat16 and 0-dim tensors included)."""
    state = {"enc.w": torch.arange(6.0).reshape(2, 3), "bn.n": torch.tensor(7),
             "dec.w": torch.ones(2, dtype=torch.bfloat16)}
    same = {k: v.clone() for k, v in reversed(state.items())}
    assert weights_digest(state) == weights_digest(same)
    bumped = {**state, "enc.w": state["enc.w"].clone()}
    bumped["enc.w"][1, 2] = torch.nextafter(bumped["enc.w"][1, 2], torch.tensor(99.0))
    renamed = {("enc.v" if k == "enc.w" else k): v for k, v in state.items()}
    as_double = {**state, "enc.w": state["enc.w"].double()}
    assert len({weights_digest(d) for d in (state, bumped, renamed, as_double)}) == 4
    transposed = {**state, "enc.w": state["enc.w"].T.contiguous().T}  # strides differ
    assert not transposed["enc.w"].is_contiguous()
    assert weights_digest(transposed) == weights_digest(state)
    flags = {"m": torch.tensor([True, False])}
    assert weights_digest(flags) != weights_digest({"m": torch.tensor([True, True])})


def test_the_kernels_are_read_from_torchs_build_text():
    build = ("PyTorch built with:\n  - GCC 13.3\n  - Intel(R) oneAPI Math Kernel Library "
             "Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture "
             "applications\n  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n")
    assert kernels(build) == "MKL 2024.2-Product Build 20240605; oneDNN v3.12.0"
    assert kernels("PyTorch built with:\n  - GCC 13.3\n") == "none"
    assert environment()["kernels"] == kernels(torch.__config__.show())


def test_reruns_whose_trainer_is_not_recorded_are_not_called_alike():
    """A federated run's eval.json is the server's (its sites trained it), and an
    eval.json whose checkpoint predates trained_with: neither says how it was
    trained, so a difference of weights is not blamed on nondeterminism."""
    env = {"torch": "2.13.0", "threads": 1}

    def run(name, digest, **fields):
        return Run(name, name, "centralized", seed=0, weights=digest, **fields)

    fed = [run(n, n * 64, federated={"settings": {}}, environment={"evaluated": env})
           for n in "ab"]
    assert reproduced(fed) == "other weights; their environments are not all recorded"
    old = run("c", "c" * 64, environment={"evaluated": env, "trained": {}})
    bench = run("d", "d" * 64, environment={"evaluated": env})  # trained in-process
    assert reproduced([old, bench]).endswith("not all recorded")
    assert reproduced([bench, run("e", "e" * 64, environment={"evaluated": env})]) \
        .startswith("other weights although trained alike")
    assert reproduced([bench, run("f", None, environment={"evaluated": env})]) is None


def test_differences_name_what_differs_and_who_had_which():
    a = {"torch": "2.13.0", "cpu": "AMD EPYC", "threads": 1, "numeric_variables": {},
         "commit": "0123456789abcdef0123456789abcdef01234567"}
    assert differences([("a", a), ("b", dict(a)), ("old", None)]) == {}
    recorded_since = {**a, "kernels": "MKL 2024.2; oneDNN v3.12.0"}  # a has no kernels
    assert differences([("a", a), ("new", recorded_since)]) == {}
    b = {**a, "torch": "2.5.1", "numeric_variables": {"MKL_CBWR": "COMPATIBLE"},
         "commit": "fedcba9876543210fedcba9876543210fedcba98+dirty"}
    got = differences([("a", a), ("b", b), ("a", dict(a)), ("old", None)])
    assert got == {"commit": {"0123456789ab": ["a", "a"], "fedcba987654+dirty": ["b"]},
                   "torch": {"2.13.0": ["a", "a"], "2.5.1": ["b"]},
                   "numeric_variables": {"none set": ["a", "a"],
                                         "MKL_CBWR=COMPATIBLE": ["b"]}}


def test_the_same_sources_have_the_same_code_digest_in_a_checkout_or_a_bundle(tmp_path):
    """A federated run executes the app bundle Flower installed (no git, commit
    None): its code digest equals the checkout's for the same sources, so a report
    comparing it with a centralized run no longer says "commit unknown" where the
    code was the same, and names the code where it was not."""
    from mmvm.provenance import CODE_PACKAGES, code_digest

    root = Path(__file__).resolve().parents[1]
    bundle = tmp_path / "bundle"
    for package in CODE_PACKAGES:
        shutil.copytree(root / package, bundle / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (bundle / "mmvm" / "__pycache__").mkdir(exist_ok=True)  # bytecode is not code
    (bundle / "mmvm" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    here = code_digest(root)
    assert here == environment()["code"] and code_digest(bundle) == here
    assert code_digest(tmp_path / "empty") is None
    central = {"commit": "0123456789abcdef0123456789abcdef01234567", "code": here}
    assert differences([("central", central), ("federated", {**central,
                                                             "commit": None})]) == {}
    (bundle / "mmvm" / "objectives.py").write_text("# another objective\n")
    changed = {"commit": None, "code": code_digest(bundle)}
    assert differences([("central", central), ("federated", changed)]) == {
        "code": {here[:12]: ["central"], changed["code"][:12]: ["federated"]}}


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
    assert "not all computed alike" in text
    assert f"trained with torch {env['torch']} (mmvm-seed0, mmvm-seed1); 2.4.0 " \
        "(mmvm-seed3)" in text  # rows trained where they were evaluated: said once
    assert "trained with cpu " in text and "Intel Xeon (mmvm-seed3)" in text
    assert "evaluated with" not in text
    assert text.index("not all computed alike") < text.index("<h2>")  # before numbers
    assert "hosts are not recorded" not in text  # no federated run among them
    more = [fake_run(tmp_path / f"mmvm-seed{s}", {**eval_result("mmvm", s, 0.9, 300.0, 0.4),
                                                  "environment": env}) for s in (4, 5)]
    text, _ = write_report(tmp_path / "more", *runs, *more, other)
    assert "(mmvm-seed0, mmvm-seed1, mmvm-seed4, mmvm-seed5); 2.4.0 (mmvm-seed3)" in text


def test_the_report_compares_the_trainers_environment_where_eval_json_has_it(tmp_path):
    """mmvm evaluate writes the checkpoint's environment as trained_with: two runs
    evaluated alike but trained with other torch releases differ where it counts."""
    env = {**environment(), "threads": 1}
    runs = [fake_run(tmp_path / f"mmvm-seed{s}", {
        **eval_result("mmvm", s, 0.9, 300.0, 0.4), "environment": env,
        "trained_with": {**env, "torch": release}}) for s, release in enumerate(("a", "b"))]
    text, _ = write_report(tmp_path, *runs)
    assert "trained with torch a (mmvm-seed0); b (mmvm-seed1)" in text
    assert "evaluated with" not in text  # evaluated alike
    fed = tmp_path / "run-7"  # a federated run the server evaluated (eval.json)
    fed.mkdir()
    (fed / "results.json").write_text(json.dumps({
        "settings": {"num_sites": 2}, "sites": {}, "environment": env,
        "config": {"model": {"method": "mmvm"}, "train": {"beta": 0.9, "seed": 2}}}))
    (fed / "eval.json").write_text(json.dumps({**eval_result("mmvm", 2, 0.9, 300.0, 0.4),
                                               "environment": {**env, "threads": 2}}))
    text, _ = write_report(tmp_path / "fed", *runs, fed)
    text = html.unescape(text)
    assert "evaluated with threads 1 (mmvm-seed0, mmvm-seed1); 2 (run-7)" in text
    assert "A federated run's sites trained it: each site's state file records its " \
        "own host" in text


def test_runs_of_one_seed_are_said_to_reproduce_or_not_and_why(tmp_path):
    """A colleague's rerun of a seed: the report says whether the weights are the
    same (eval.json's weights_sha256) and, if not, whether the recorded environments
    explain it."""
    env = {**environment(), "threads": 1}

    def run(name: str, digest: str, **changed) -> Path:
        return fake_run(tmp_path / name, {**eval_result("mmvm", 0, 0.9, 300.0, 0.4),
                                          "environment": env, "weights_sha256": digest,
                                          "trained_with": {**env, **changed}})

    mine, same = run("mine", "a" * 64), run("same", "a" * 64)
    other, threads = run("other", "b" * 64), run("threads", "c" * 64, threads=2)
    said = {}
    for name, rerun in (("same", same), ("other", other), ("threads", threads)):
        said[name] = html.unescape(write_report(tmp_path / f"r-{name}", mine, rerun)[0])
    assert "seed 0: the same weights in every run (weights_sha256)" in said["same"]
    assert "seed 0: other weights although trained alike" in said["other"]
    assert "seed 0: other weights, trained in other environments" in said["threads"]
    assert "trained with threads 1 (mine); 2 (threads)" in said["threads"]


def test_a_seeded_run_gives_the_same_weights_in_two_processes(tmp_path):
    """The claim the numeric-path benchmark rests on, through it: the same path twice
    (two fresh mmvm train processes) gives the same weights bit for bit, and each
    checkpoint records the variables and the thread count it ran with."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "numeric_paths.py"),
                    "--networks", "mlp", "--paths", "default", "--repeats", "2",
                    "--epochs", "1", "--set", "data.max_train=64", "--out", str(tmp_path / "out"),
                    "--work", str(tmp_path / "work")], check=True, capture_output=True)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["same_bits_as_default"] for r in rows] == [True, True]
    assert rows[1]["max_abs_weight_diff"] == 0 and rows[0]["recorded"] == "threads=1"
    assert not (tmp_path / "work" / "runs" / "mlp-default-0").exists()  # deleted


def test_evaluate_refuses_a_thread_count_torch_cannot_take(capsys):
    with pytest.raises(SystemExit) as stop:  # torch.set_num_threads(10**8) segfaults
        main(["evaluate", "--run", "runs/none", "--threads", "100000000"])
    assert stop.value.code == 2 and "--threads: 100000000: at most 1024" in \
        capsys.readouterr().err
