"""``mmvm evaluate``: clear errors, the data a run trained on (its own config, a
deployment's sites' folders, another config's data noted), eval.json and the
generations, earlier evaluations kept (a failed write loses none); a diverged model
(NaN weights, overflowing latents) is named by evaluate and encode alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mmvm.data.dataset import MultimodalDataset
from tests.support.evaluation_data import (
    NAMES,
    TEST_ROWS,
    digit_vectors,
    run_copy,
    vector_config,
)

torch.set_num_threads(1)


def test_evaluate_cli_errors_are_clear(tmp_path, capsys):
    from mmvm.cli import main

    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    config = str(Path(__file__).resolve().parents[2] / "configs" / "polymnist.toml")
    assert main(["evaluate", "--config", config, "--set", "train.epoch=3", "--run",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "did you mean" in err and "epochs" in err


def test_evaluate_without_config_reads_the_data_the_run_trained_on(tmp_path, capsys):
    """A run folder alone: its own config, so its own data (a federated run's is
    elsewhere than configs/ says); another --config's data is used but noted."""
    import json
    import shutil

    from mmvm.cli import main
    from mmvm.training import train

    data = tmp_path / "trained-on"
    paths = digit_vectors(data)
    cfg = vector_config(data, epochs=1)
    train(cfg, MultimodalDataset.from_parquet(paths["train"], NAMES), show_progress=False)
    run = str(data / "run")
    flags = ["--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(["evaluate", "--run", run, "--set", "data.max_test=50", *flags]) == 0
    used = json.loads((data / "run" / "eval.json").read_text())["settings"]
    assert used["data"]["root"] == str(data) and used["dataset"]["test_samples"] == 50
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "test"):
        shutil.copy(paths[split], other / f"{split}.parquet")
    toml = tmp_path / "c.toml"
    toml.write_text(f'[data]\nroot = "{other}"\n[model]\nlatent_dim = 8\n' + "".join(
        f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES))
    assert main(["evaluate", "--config", str(toml), "--run", run, *flags]) == 0
    assert f"note: evaluating on data.root={other} (from {toml}); the run trained on " \
        f"{data}" in capsys.readouterr().out


def test_evaluate_a_deployments_run_names_the_data_it_needs(tmp_path, capsys):
    """A deployment's run folder as its ServerApp writes it (no data folder: the sites
    kept their files): the error says so, where the sites' own evaluation is and how
    to give readable data, and that data evaluates it; a run that collected no model
    says why instead of asking for training."""
    import dataclasses
    import json

    from mmvm.cli import main
    from mmvm.data.sites import site_layout, split_sites
    from mmvm.federation.loop import FederationResult
    from mmvm.federation.results import write_results
    from mmvm.federation.settings import settings_for
    from mmvm.training import build_model

    paths = digit_vectors(tmp_path / "all")
    cfg = vector_config(tmp_path / "all")
    sites = ["site-a", "site-b", "site-c"]
    split_sites([paths["train"], paths["test"]], tmp_path / "sites", [
        dataclasses.replace(s, name=n) for s, n in zip(site_layout("vertical", NAMES),
                                                      sites, strict=True)])
    state = {k: v.numpy() for k, v in build_model(cfg).state_dict().items()}
    history = [{"window": 0, "epoch": 1, "step": 1, "rec_nll": 1.0, "reg": 0.1, "bytes": 9}]
    evaluation = {f"k{i}": {"site": n, "probe/m0": 0.5} for i, n in enumerate(sites)}
    run = tmp_path / "run-7"  # data=None: a deployment's server knows no data folder
    write_results(run, settings_for(cfg), FederationResult(
        history=history, model_state=state, evaluation=evaluation))
    flags = ["--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(["evaluate", "--run", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert "records no data folder" in err and "a deployment's data stayed at the sites" in err
    assert f"already in {run / 'results.json'}" in err and "--set data.root=<folder>" in err
    assert "data.folders=" in err and "does not exist" not in err
    folders = '["site-a","site-b","site-c"]'
    assert main(["evaluate", "--run", str(run), "--set", f"data.root={tmp_path / 'sites'}",
                 "--set", f"data.folders={folders}", *flags]) == 0
    used = json.loads((run / "eval.json").read_text())["settings"]
    assert used["data"]["root"] == str(tmp_path / "sites")
    assert used["dataset"]["test_samples"] == TEST_ROWS
    capsys.readouterr()
    toml = tmp_path / "eval.toml"  # another config's data: the note says what the run had
    toml.write_text(f'[data]\nroot = "{tmp_path / "all"}"\n[model]\nlatent_dim = 8\n' + "".join(
        f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES))
    assert main(["evaluate", "--run", str(run), "--config", str(toml), *flags]) == 0
    assert "the run recorded no data folder (its data stayed at the sites)" in \
        capsys.readouterr().out
    kept = tmp_path / "run-8"  # collect-model = false: every site kept its weights
    write_results(kept, settings_for(cfg, collect_model=False), FederationResult(
        history=history, evaluation=evaluation, kept_weights=sites))
    assert main(["evaluate", "--run", str(kept), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{kept} is a federated run without an assembled model" in err
    assert "collect-model = false" in err and f"in {kept / 'results.json'}" in err
    assert "train first" not in err


@pytest.mark.slow
def test_evaluate_cli_writes_eval_json_and_generations(trained, tmp_path, capsys):
    import json

    from mmvm.cli import main

    cfg = vector_config(trained, epochs=1)  # what trained the run (the session's)
    run_copy(trained, tmp_path)  # into tmp_path / "run"
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[data]\nroot = "{trained}"\n[model]\nlatent_dim = 8\n' + "".join(
            f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\n' for m in NAMES)
        + '[eval]\nclassifier_epochs = 2\n')
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert res["method"] == "mmvm" and "coherence" in res
    # the settings this evaluation used (its --config), not the run's config.json
    used = res["settings"]
    assert used["eval"]["classifier_epochs"] == 2 != cfg.eval.classifier_epochs
    assert used["data"]["root"] == str(trained) and used["data"]["max_test"] == 0
    assert used["dataset"]["test_samples"] == res["n_test"]
    # vector data: the latents by label (as the federated server draws), not vectors
    # drawn as grey images
    assert (tmp_path / "run" / "latents.png").stat().st_size > 1000
    assert not (tmp_path / "run" / "generations.png").exists()
    said = capsys.readouterr().out
    assert "probe acc" in said and f"wrote {tmp_path / 'run' / 'latents.png'}" in said
    # evaluated again without coherence: the first evaluation is kept, and it says so
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu", "--no-coherence", "--no-plot"]) == 0
    assert "the earlier eval.json of this run is now" in capsys.readouterr().out
    (kept,) = (tmp_path / "run").glob("eval.*-*.json")
    assert json.loads(kept.read_text()) == res
    assert "coherence" not in json.loads((tmp_path / "run" / "eval.json").read_text())
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu", "--no-coherence", "--no-plot"]) == 0
    assert len(list((tmp_path / "run").glob("eval.*-*.json"))) == 2  # each one kept
    assert json.loads(kept.read_text()) == res
    # drawn again: the earlier picture (a federated server's, say) is kept as well,
    # under the time of the eval.json kept with it (written seconds apart, the pair
    # had two names: a walkthrough), not its own
    first = (tmp_path / "run" / "latents.png").read_bytes()
    os.utime(tmp_path / "run" / "latents.png", (1.6e9, 1.6e9))  # 2020
    before = set((tmp_path / "run").glob("eval.*-*.json"))
    assert main(["evaluate", "--config", str(toml), "--run", str(tmp_path / "run"),
                 "--device", "cpu", "--no-coherence"]) == 0
    assert "the earlier latents.png of this run is now" in capsys.readouterr().out
    (picture,) = (tmp_path / "run").glob("latents.*-*.png")
    assert picture.read_bytes() == first
    (pair,) = set((tmp_path / "run").glob("eval.*-*.json")) - before
    assert picture.name.split(".")[1] == pair.name.split(".")[1], (picture, pair)


# ------------------------------------------------------ refused before any scoring
@pytest.mark.parametrize("name, flags", [("eval.json", ["--no-plot"]),
                                         ("generations.png", [])])
def test_an_output_that_is_a_folder_is_refused_before_scoring(trained, tmp_path, capsys,
                                                               no_scoring, name, flags):
    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    (run / name).mkdir()
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-coherence",
                 *flags]) == 2
    assert capsys.readouterr().err == (f"mmvm evaluate: error: {run / name} is a folder (or "
                                       f"another non-file) where the run's {name} goes; "
                                       "move it away\n")


@pytest.mark.parametrize("device, said", [
    ("tpu", "--device tpu: 'tpu' is not a device; choose auto, cpu, cuda, cuda:<n> or mps"),
    ("mps", "--device mps: device 'mps' requested but Apple's MPS is not available on this "
            "machine; use cpu or auto"),
])
def test_a_device_it_cannot_use_is_named_not_the_checkpoint(trained, capsys, monkeypatch,
                                                            no_scoring, device, said):
    from mmvm.cli import main

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["evaluate", "--run", str(trained / "run"), "--device", device]) == 2
    assert capsys.readouterr().err == f"mmvm evaluate: error: {said}\n"


def test_a_corrupted_checkpoint_is_one_line(tmp_path, capsys):
    from mmvm.cli import main

    (tmp_path / "checkpoint.pt").write_text("garbage\n")
    assert main(["evaluate", "--run", str(tmp_path), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"mmvm evaluate: error: checkpoint {tmp_path / 'checkpoint.pt'} cannot be read: it "
        "is not a torch checkpoint, or it is truncated (a partial copy or download)\n")


def _diverged(run: Path, value: float) -> str:
    """Set ``run``'s checkpoint's first m0 encoder weight to ``value`` (as a diverged
    run would have left it, written by other means); its name."""
    state = torch.load(run / "checkpoint.pt")
    name = next(k for k in state["model"] if k.startswith("encoders.m0.")
                and k.endswith("weight"))
    state["model"][name].fill_(value)
    torch.save(state, run / "checkpoint.pt")
    return name


@pytest.mark.parametrize("command", ["evaluate", "encode"])
def test_nan_weights_are_refused_naming_the_checkpoint_and_tensor(trained, tmp_path,
                                                                  capsys, command):
    """evaluate used to die in scikit-learn ("Input X contains NaN"), encode to write
    NaN latents with exit 0."""
    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    name = _diverged(run, float("nan"))
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "latents.parquet"
    argv = (["evaluate", "--run", str(run), "--no-coherence", "--no-plot"]
            if command == "evaluate" else
            ["encode", "--run", str(run), str(trained / "test.parquet"), "--out", str(out),
             "--no-progress"])
    assert main([*argv, "--device", "cpu"]) == 2
    n = torch.load(run / "checkpoint.pt")["model"][name].numel()
    assert capsys.readouterr().err == (
        f"mmvm {command}: error: checkpoint {run / 'checkpoint.pt'}: the model's weight "
        f"{name} ({n} of its {n} values are NaN or infinite); the training diverged "
        "before it was written\n")
    assert sorted(p.name for p in run.iterdir()) == before and not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "encode"])
def test_weights_that_overflow_the_latents_are_refused_naming_the_checkpoint(
        trained, tmp_path, capsys, command):
    """Huge but finite weights: every weight loads, the latents overflow (1e30 x an
    input): named before scikit-learn sees a NaN or a table of them is written."""
    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    _diverged(run, 1e30)
    out = tmp_path / "latents.parquet"
    argv = (["evaluate", "--run", str(run), "--no-coherence"] if command == "evaluate" else
            ["encode", "--run", str(run), str(trained / "test.parquet"), "--out", str(out),
             "--no-progress"])
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmvm {command}: error: {run / 'checkpoint.pt'}: the model "
                          "gives NaN, infinite or overflowing latents (")
    assert "of modality m0, beyond 1e+15): its training diverged before this checkpoint " \
        "was written; train again with a lower train.lr" in err and err.count("\n") == 1
    assert not (run / "eval.json").exists() and not (run / "generations.png").exists()
    assert not out.exists()


def test_a_site_state_with_nan_weights_is_refused_by_encode(trained, tmp_path, capsys):
    from mmvm.cli import main
    from mmvm.config import load_config
    from mmvm.training import build_model

    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nlatent_dim = 8\n' + "".join(
        f'[model.modalities.{m}]\nkind = "vector"\nshape = [64]\nscale = 0.3\n'
        f'width = 64\nlayers = 1\n' for m in NAMES))
    model = build_model(load_config(str(toml), []), ["m1"])
    weights = model.state_dict()
    name = next(iter(weights))
    weights[name].fill_(float("inf"))
    torch.save({"names": ["m1"], "model": weights}, tmp_path / "site-b.pt")
    out = tmp_path / "latents.parquet"
    assert main(["encode", "--site-state", str(tmp_path / "site-b.pt"), "--config",
                 str(toml), str(trained / "test.parquet"), "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 2
    n = weights[name].numel()
    assert capsys.readouterr().err == (
        f"mmvm encode: error: {tmp_path / 'site-b.pt'}: the site's weight {name} ({n} of "
        f"its {n} values are NaN or infinite); its training diverged before the state "
        "was written\n")
    assert not out.exists()


@pytest.mark.slow
def test_a_failed_eval_json_write_keeps_the_earlier_one(trained, tmp_path):
    """The earlier eval.json used to be moved aside before the new one was written:
    a write the kernel refuses (here the file size limit, RLIMIT_FSIZE) left none.
    Now it stays under its own name, and nothing else is left behind."""
    import json
    import os
    import resource
    import signal
    import subprocess
    import sys

    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    argv = ["evaluate", "--run", str(run), "--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(argv) == 0
    earlier = (run / "eval.json").read_bytes()
    names = sorted(p.name for p in run.iterdir())

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    proc = subprocess.run([sys.executable, "-m", "mmvm", *argv], capture_output=True,
                          text=True, timeout=300, preexec_fn=small_files,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"mmvm evaluate: error: could not write {run / 'eval.json'}: "
                           f"File too large (is the file system of {run} full, or a quota "
                           "or file size limit hit?); the previous eval.json is intact\n")
    assert (run / "eval.json").read_bytes() == earlier
    assert sorted(p.name for p in run.iterdir()) == names  # no eval.<time>.json, no temp
    assert main(argv) == 0  # room again: the earlier one kept under its time
    (kept,) = run.glob("eval.*-*.json")
    assert kept.read_bytes() == earlier and json.loads((run / "eval.json").read_text())


def test_a_set_of_the_model_is_noted_as_ignored(trained, tmp_path, capsys):
    """The checkpoint fixes the model: --set model.latent_dim=16 would be silently
    ignored; data.* and eval.* apply."""
    import json

    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-coherence",
                 "--no-plot", "--set", "model.latent_dim=16", "--set", "train.beta=3",
                 "--set", "data.max_test=40"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("note: ignored --set model.latent_dim=16, train.beta=3: the model and "
                     "how it was trained (model.*, train.*) are the run's, from "
                     f"{run / 'checkpoint.pt'}; evaluate takes data.* and eval.* settings")
    result = json.loads((run / "eval.json").read_text())
    assert result["n_test"] == 40 and result["beta"] == 1.0


def test_imputation_draws_give_the_predictive_reading_and_are_recorded(trained, tmp_path,
                                                                      capsys):
    import json

    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    args = ["evaluate", "--run", str(run), "--device", "cpu", "--no-coherence", "--no-plot"]
    assert main(args) == 0
    one = json.loads((run / "eval.json").read_text())["imputation"]
    assert main([*args, "--imputation-draws", "8"]) == 0
    several = json.loads((run / "eval.json").read_text())["imputation"]
    assert "predictive over 8 draws" in several["scoring"]
    assert "predictive" not in one["scoring"]
    # log of a mean of likelihoods is at least the mean of their logs, on average
    assert several["total"] < one["total"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # argparse's usage error
        main([*args, "--imputation-draws", "0"])
    assert info.value.code == 2 and "0: one or more" in capsys.readouterr().err


def test_train_out_dir_is_not_ignored_when_it_picks_the_run():
    from mmvm.cli.evaluate import ignored_overrides

    assert ignored_overrides(["train.out_dir=runs/a", "data.max_test=5"], Path("runs/a"),
                             picks_run=True) is None
    assert "ignored --set train.out_dir=runs/a:" in ignored_overrides(
        ["train.out_dir=runs/a"], Path("runs/b"), picks_run=False)


def test_without_hard_links_the_earlier_eval_json_is_copied_with_its_time(
        tmp_path, monkeypatch):
    """A file system that refuses hard links (some network and FUSE mounts): the
    earlier evaluation is copied under its time instead, and a failed write of the
    new one removes the copy again."""
    import errno
    import os

    import mmvm.atomic
    from mmvm.cli.earlier import write_keeping_earlier

    path = tmp_path / "eval.json"
    path.write_text('{"earlier": 1}')
    os.utime(path, (1_700_000_000, 1_700_000_000))

    def no_links(src, dst, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(mmvm.atomic.os, "link", no_links)
    real = mmvm.atomic.os.replace

    def replace(src, dst):  # the copy goes in, the new eval.json does not
        if Path(dst) == path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(mmvm.atomic.os, "replace", replace)
    with pytest.raises(OSError, match="the previous eval.json is intact"):
        write_keeping_earlier(path, b'{"new": 2}')
    assert os.listdir(tmp_path) == ["eval.json"] and path.read_text() == '{"earlier": 1}'
    monkeypatch.setattr(mmvm.atomic.os, "replace", real)
    kept = write_keeping_earlier(path, b'{"new": 2}')
    assert kept.read_text() == '{"earlier": 1}' and path.read_text() == '{"new": 2}'
    assert kept.stat().st_mtime == 1_700_000_000
    assert sorted(os.listdir(tmp_path)) == sorted(["eval.json", kept.name])
