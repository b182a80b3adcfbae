"""Class names that mean the same ids at every site: ``--classes`` when preparing, and
files joined by sample id that number a label's classes differently are refused.

Labels given as names become ids in the sorted order of the names one site's file
holds: a hospital without an "effusion" case numbers "normal" 0 where another numbers
it 1, and a model trained on both folders joined would learn one id for two findings.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmvm.cli import main
from mmvm.config import DataConfig, ModalitySpec
from mmvm.data import check_data_fits, open_dataset
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.arrays import load_labels, prepare_arrays
from mmvm.data.prepare.image_folder import prepare_images
from mmvm.data.prepare.label_values import class_ids
from mmvm.data.prepare.snippet import config_snippet
from mmvm.data.store import DataError, read_site_meta

N = 60
SPEC = [ModalitySpec(name="x", kind="vector", shape=(3,))]


def _site(tmp_path, name: str, findings: list[str], classes: str | None = None):
    """A site's prepared folder (its own samples, one vector modality), via the CLI."""
    rng = np.random.default_rng(len(name))
    d = tmp_path / f"raw-{name}"
    d.mkdir()
    np.save(d / "x.npy", rng.normal(size=(N, 3)).astype(np.float32))
    (d / "ids.txt").write_text("\n".join(f"{name}-{i}" for i in range(N)) + "\n")
    (d / "finding.txt").write_text("\n".join(findings[i % len(findings)]
                                             for i in range(N)) + "\n")
    argv = ["data", "prepare", "arrays", "--modality", f"x={d / 'x.npy'}", "--ids",
            str(d / "ids.txt"), "--label", str(d / "finding.txt"), "--out",
            str(tmp_path / name), "--quiet"]
    assert main(argv + (["--classes", classes] if classes else [])) == 0
    return tmp_path / name / "train.parquet"


def test_sites_that_number_names_differently_are_refused_when_joined(tmp_path):
    a = _site(tmp_path, "a", ["normal", "pneumonia"])
    b = _site(tmp_path, "b", ["effusion", "normal", "pneumonia"])
    assert read_site_meta(a)["dataset"]["label_names"] == {"label": ["normal",
                                                                      "pneumonia"]}
    check_data_fits(SPEC, [a])  # alone: fine
    with pytest.raises(DataError, match=r"number the classes of 'label' differently "
                                        r"\(0=normal, 1=pneumonia vs 0=effusion, "
                                        r"1=normal, 2=pneumonia\).*--classes label="):
        check_data_fits(SPEC, [a, b])
    for streaming in (False, True):  # every join of the files, not only the check
        with pytest.raises(DataError, match="number the classes of 'label' differently"):
            open_dataset([a, b], ["x"], DataConfig(streaming=streaming))


def test_the_same_classes_at_every_site_give_the_same_ids(tmp_path):
    order = "normal,pneumonia,effusion"
    a = _site(tmp_path, "a", ["normal", "pneumonia"], order)
    b = _site(tmp_path, "b", ["effusion", "normal", "pneumonia"], f"label={order}")
    check_data_fits(SPEC, [a, b])
    both = MultimodalDataset.from_parquet([a, b], ["x"], "label")
    finding = {**{f"a-{i}": ["normal", "pneumonia"][i % 2] for i in range(N)},
               **{f"b-{i}": ["effusion", "normal", "pneumonia"][i % 3] for i in range(N)}}
    want = {"normal": 0, "pneumonia": 1, "effusion": 2}  # a has no effusion: no shift
    got = dict(zip(both.sample_ids, both.labels.tolist(), strict=True))
    assert {s[0] for s in got} == {"a", "b"}
    assert all(got[s] == want[finding[s]] for s in got)
    assert "# label: 0 = normal, 1 = pneumonia, 2 = effusion" in config_snippet(
        {"train": a, "test": a.with_name("test.parquet")})


def test_classes_that_do_not_fit_the_labels_are_refused(tmp_path):
    assert class_ids(["b", "", "a"], "f.txt", ["b", "a", "c"])[0].tolist() == [0, -1, 1]
    with pytest.raises(DataError, match=r"f.txt: class names \['d'\] are not among "
                                        r"--classes \['a', 'b'\]"):
        class_ids(["a", "d"], "f.txt", ["a", "b"])
    with pytest.raises(DataError, match="must be distinct, non-empty class names"):
        class_ids(["a"], "f.txt", ["a", "a"])
    # ids given as ids are named by the list, which must name every id
    ids, names = class_ids(["0", "2", ""], "f.txt", ["x", "y", "z"])
    assert ids.tolist() == [0, 2, -1] and names == ["x", "y", "z"]
    np.save(tmp_path / "ids.npy", np.array([0, 3, 1]))
    with pytest.raises(DataError, match=r"class id 3 has no name in --classes \(2 "
                                        r"names: ids 0..1\)"):
        load_labels(tmp_path / "ids.npy", ["x", "y"])
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"--classes for \['label.odor'\], which no "
                                         r"--label gives"):
        prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"},
                       labels={"label": tmp_path / "ids.npy"},
                       classes={"label.odor": ["a"]})
    assert not (tmp_path / "out").exists()


def test_image_folders_take_classes_by_table_column(tmp_path):
    (tmp_path / "frontal").mkdir()
    for i in range(8):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(
            tmp_path / "frontal" / f"s{i}.png")
    (tmp_path / "table.csv").write_text("sample_id,finding\n" + "".join(
        f"s{i},{'cardiomegaly' if i % 2 else 'normal'}\n" for i in range(8)))
    paths = prepare_images(tmp_path / "site", {"frontal": tmp_path / "frontal"}, size=28,
                           table=tmp_path / "table.csv", test_fraction=0.5,
                           classes={"finding": ["normal", "cardiomegaly", "effusion"]})
    meta = read_site_meta(paths["train"])
    assert meta["dataset"]["label_names"] == {
        "label.finding": ["normal", "cardiomegaly", "effusion"]}


def test_a_continuous_label_is_told_how_to_bin_it(tmp_path):
    """A rat's position in cm as the label: refused as "must be integers" with
    nothing on what to do (the neuroscience walkthrough); the hint's own recipe
    gives class ids prepare takes."""
    rng = np.random.default_rng(0)
    position = rng.uniform(0, 200, N)
    np.save(tmp_path / "x.npy", rng.normal(size=(N, 3)).astype(np.float32))
    np.save(tmp_path / "position.npy", position)
    with pytest.raises(DataError, match=r"a continuous value \(a position, a time\)\? "
                                        r"probes and coherence classify: bin it, e\.g\. "
                                        r"np\.digitize"):
        prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"},
                       labels={"label": tmp_path / "position.npy"})
    a = position
    np.save(tmp_path / "bins.npy", np.digitize(a, np.linspace(a.min(), a.max(), 11)[1:-1]))
    out = prepare_arrays(tmp_path / "out", {"x": tmp_path / "x.npy"},
                         labels={"label": tmp_path / "bins.npy"})
    assert read_site_meta(out["train"])["labels"] == ["label"]


def test_a_site_without_the_last_classes_numbers_the_others_alike(tmp_path):
    """Sorted names ['a', 'b'] and ['a', 'b', 'c'] give a and b the same ids: joined,
    nothing is mixed up (it was refused as if it were)."""
    a = _site(tmp_path, "a", ["normal", "pneumonia"])
    b = _site(tmp_path, "b", ["normal", "pneumonia", "tumour"])
    c = _site(tmp_path, "c", ["effusion", "normal"])
    check_data_fits(SPEC, [a, b])
    with pytest.raises(DataError, match=r"\(0=normal, 1=pneumonia, 2=tumour vs "
                                        r"0=effusion, 1=normal\)"):
        check_data_fits(SPEC, [a, b, c])


def test_the_names_of_a_label_column_are_the_longest_list_a_file_holds(tmp_path):
    from mmvm.data.label_names import label_names_for

    a = _site(tmp_path, "a", ["normal", "pneumonia"], classes="label=normal,pneumonia")
    b = _site(tmp_path, "b", ["normal", "effusion"],
              classes="label=normal,pneumonia,effusion")
    assert label_names_for([a, b], "label") == ["normal", "pneumonia", "effusion"]
    assert label_names_for([a], "label.other") is None


def test_data_check_warns_where_one_site_names_the_classes_and_another_gives_ids(
        tmp_path, capsys):
    a = _site(tmp_path, "a", ["lemon", "mint"])
    b = _site(tmp_path, "b", ["0", "1"])  # the lab's own odor codes
    assert main(["data", "check", str(a), str(b)]) == 0
    err = capsys.readouterr().err
    assert f"label column 'label': {a} name its classes (0=lemon, 1=mint); {b} give " \
        "bare ids" in " ".join(err.split()) and "--classes lemon,mint" in err, err


def test_one_class_written_two_ways_is_refused_unless_listed(tmp_path):
    """"normal" and "Normal" became classes 0 = Normal, 2 = normal, one sample in a
    class of its own and the ids of the rest shifted, without a word."""
    with pytest.raises(DataError, match=r"f.txt: class names 'Normal' and 'normal' differ "
                                        r"only in case or spacing"):
        class_ids(["normal", "Normal", "effusion", ""], "f.txt")
    with pytest.raises(DataError, match=r"'no  finding' and 'no finding'"):
        class_ids(["no finding", "no  finding"], "f.txt")
    ids, names = class_ids(["a", "A"], "f.txt", classes=["a", "A"])  # meant so
    assert ids.tolist() == [0, 1] and names == ["a", "A"]


def test_ids_written_as_floats_are_ids_not_class_names():
    """CheXpert's CSVs write findings as 1.0 / 0.0 / -1.0 (uncertain) / blank: sorted
    as names they became a 3-class label (-1.0 < 0.0 < 1.0), scored by one-vs-rest."""
    ids, names = class_ids(["1.0", "0.0", "-1.0", "", "1"], "chexpert.csv")
    assert ids.tolist() == [1, 0, -1, -1, 1] and names is None
    with pytest.raises(DataError, match="holds the number '1.0' among class names"):
        class_ids(["1.0", "pacemaker"], "f.txt")
