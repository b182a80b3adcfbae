"""mmvm train on several sites' folders: it says how the join by sample id coupled
the modalities, and a missing file under a folder of site folders names data.folders."""

from __future__ import annotations

import numpy as np

from mmvm.cli import main
from mmvm.data.coupling import coupling_counts, uncoupled_warning, weak_coupling_note
from mmvm.data.prepare.arrays import prepare_arrays
from tests.support.lab import lab_config


def _sites(tmp_path, b_ids: bool, b_padded: bool = False) -> None:
    rng = np.random.default_rng(0)
    n = 80
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ids.txt").write_text("\n".join(f"t{i}" for i in range(n)))
    (tmp_path / "padded.txt").write_text("\n".join(  # another export: t007 for t7
        f"t{i:03d}" if i < 20 else f"t{i}" for i in range(n)))
    for m, d in (("a", 6), ("b", 4)):
        np.save(tmp_path / f"{m}.npy", rng.normal(size=(n, d)))
    prepare_arrays(tmp_path / "sites" / "site-a", {"a": tmp_path / "a.npy"},
                   ids=tmp_path / "ids.txt")
    prepare_arrays(tmp_path / "sites" / "site-b", {"b": tmp_path / "b.npy"},
                   ids=(tmp_path / ("padded.txt" if b_padded else "ids.txt")) if b_ids
                   else None)


def _train(tmp_path, folders: str) -> int:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(lab_config(tmp_path / "sites", tmp_path / "run", folders,
                              {"a": 6, "b": 4}))
    return main(["train", "--config", str(cfg), "--no-progress", "--fresh"])


def test_the_join_is_reported_and_ids_that_do_not_match_are_noted(tmp_path, capsys):
    _sites(tmp_path, b_ids=True)
    assert _train(tmp_path, '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "joined 2 files by sample id: " in out and "note:" not in out
    _sites(tmp_path / "x", b_ids=False)  # site b prepared without its ids
    assert _train(tmp_path / "x", '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "have two or more modalities" in out and "note: few samples" not in out
    # no shared id at all: a loud warning (a federated run refuses such sites)
    assert "warning: the files share no sample id: no sample has two modalities" in out
    assert "this trains independent unimodal VAEs" in out


def test_ids_one_site_zero_padded_are_shown_with_their_match(tmp_path, capsys):
    _sites(tmp_path, b_ids=True, b_padded=True)
    assert _train(tmp_path, '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "note: not every sample is held with another modality (a " in out
    assert "differ only in leading zeros, case or spaces" in out
    assert "'t1' and 't001'" in out or "'t0' and 't000'" in out, out
    _sites(tmp_path / "all", b_ids=True, b_padded=True)  # every id padded: no join
    (tmp_path / "all" / "padded.txt").write_text("\n".join(f"t{i:03d}" for i in range(80)))
    from mmvm.data.prepare.arrays import prepare_arrays as prepare
    prepare(tmp_path / "all" / "sites" / "site-b", {"b": tmp_path / "all" / "b.npy"},
            ids=tmp_path / "all" / "padded.txt", force=True)
    assert _train(tmp_path / "all", '["site-a", "site-b"]') == 0
    out = capsys.readouterr().out
    assert "warning: the files share no sample id" in out
    assert "differ only in leading zeros, case or spaces" in out


def test_a_folder_of_site_folders_suggests_data_folders(tmp_path, capsys):
    _sites(tmp_path, b_ids=True)
    assert _train(tmp_path, "[]") == 2
    err = capsys.readouterr().err
    assert """--set 'data.folders=["site-a","site-b"]'""" in err


def test_the_suggested_setting_works_for_folder_names_with_quotes(tmp_path, capsys):
    """The hint is a shell word and a TOML array: pasted as is, it trains."""
    import shlex

    _sites(tmp_path, b_ids=True)
    odd = tmp_path / "sites" / """o'brien "b" lab"""
    (tmp_path / "sites" / "site-b").rename(odd)
    assert _train(tmp_path, "[]") == 2
    err = " ".join(capsys.readouterr().err.split())
    words = shlex.split(err[err.index("--set "):err.index(" (or folders")])
    assert words[1] == """data.folders=["o'brien \\"b\\" lab","site-a"]"""
    assert main(["train", "--config", str(tmp_path / "lab.toml"), "--no-progress",
                 "--fresh", *words]) == 0


def test_coupling_counts():
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], bool)
    c = coupling_counts(mask, ["x", "y", "z"])
    assert c == {"samples": 4, "per_modality": {"x": 3, "y": 2, "z": 2},
                 "coupled": {"x": 2, "y": 2, "z": 1}, "multimodal": 2, "complete": 1}
    note = weak_coupling_note(c["per_modality"], c["coupled"])
    assert "(x 2 of 3, 67%; z 1 of 2, 50%)" in note  # y: both of its samples coupled
    # a split by groups at one site only, or by each site's own numbering: the cause
    assert note.endswith("--seed, --test-fraction, and groups all sites share: a trial "
                         "or patient id, not each site's own numbering)")
    # two sites that share ids and a third that shares none: the third is named,
    # though as many samples are multimodal as the smallest modality has
    ab = np.array([[1, 1, 0]] * 10 + [[0, 0, 1]] * 10, bool)
    c = coupling_counts(ab, ["a", "b", "c"])
    assert c["multimodal"] == 10 == min(c["per_modality"].values())
    # ... on its own, as a warning (the walkthrough's rat prepared without --ids got
    # the same note as a correct dataset whose rats share 76-90 %)
    assert weak_coupling_note(c["per_modality"], c["coupled"]) is None
    assert uncoupled_warning(c["per_modality"], c["coupled"]).startswith(
        "c shares no sample with another modality: it trains as an independent VAE")
    assert uncoupled_warning({"a": 5, "b": 5}, {"a": 0, "b": 0}) is None  # all alone:
    # the files share no id at all, which mmvm train and a federated run say otherwise
    assert weak_coupling_note({"a": 5, "b": 5}, {"a": 5, "b": 5}) is None
    assert weak_coupling_note({"a": 5, "b": 5}, None) is None  # an older record


def test_sites_split_differently_are_refused_when_joined(tmp_path, capsys):
    """A lab prepared with --seed 1, the others with 0: 217 of one rat's test samples
    were another's train samples and nobody was told (the neuroscience walkthrough);
    a lab prepared without --ids shares nothing and got only the note every dataset
    gets. Both are said now, the first as a refusal."""
    from mmvm.data.coupling import split_leak
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(0)
    (tmp_path / "ids.txt").write_text("\n".join(f"s{i}" for i in range(80)) + "\n")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(80, 3)).astype(np.float32))
        prepare_arrays(tmp_path / f"site-{name}", {name: tmp_path / f"{name}.npy"},
                       ids=tmp_path / "ids.txt", seed=seed)
    files = lambda split, names: [tmp_path / f"site-{n}" / f"{split}.parquet"  # noqa: E731
                                  for n in names]
    assert split_leak(files("train", "ab"), files("test", "ab")) is None
    said = split_leak(files("train", "abc"), files("test", "abc"))
    assert said and "test samples of" in said and "are in the train split of" in said
    assert said.endswith("Prepare every site with the same --seed, --test-fraction and "
                         "groups (--groups, --group-column), each sample in the same "
                         "group at every site (a trial or patient id the sites share, "
                         "not each site's own numbering), or prepare it with "
                         "--split-from <the other site's folder> (another preparer's "
                         "split, MIMIC-CXR's by patient say)")
    # c takes a's split, whatever its seed: nothing leaks
    prepare_arrays(tmp_path / "site-c", {"c": tmp_path / "c.npy"},
                   ids=tmp_path / "ids.txt", seed=1, force=True,
                   split_from=tmp_path / "site-a")
    assert split_leak(files("train", "abc"), files("test", "abc")) is None
    # mmvm train refuses the join, before training
    (tmp_path / "sites").mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        prepare_arrays(tmp_path / "sites" / f"site-{name}", {name: tmp_path / "c.npy"},
                       ids=tmp_path / "ids.txt", seed=seed, force=True)
    cfg = tmp_path / "lab.toml"
    cfg.write_text(lab_config(tmp_path / "sites", tmp_path / "run", '["site-a", "site-b"]',
                              {"a": 3, "b": 3}))
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    assert "are in the train split of" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_one_folder_without_its_test_file_is_warned_of_for_its_modalities(tmp_path,
                                                                          capsys):
    _sites(tmp_path, b_ids=True)
    gone = tmp_path / "sites" / "site-b" / "test.parquet"
    gone.unlink()
    assert _train(tmp_path, '["site-a", "site-b"]') == 0  # training needs none
    err = " ".join(capsys.readouterr().err.split())
    assert (f"mmvm train: warning: no test split: {gone} does not exist; mmvm evaluate "
            f"scores that folder's modalities on no test sample") in err
