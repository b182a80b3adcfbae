"""`mmvm run` on the user's own site folders (`site-dirs`): a folder that is missing,
holds no train or test file, or whose files do not fit the config (image shapes,
modalities, the label column, class numbering) is named before Flower starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmvm.cli.run_config import check_run_config
from mmvm.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_a_mistyped_site_folder_is_named_with_the_site_folder_it_is_close_to(tmp_path):
    for name in ("site-rat1", "site-rat2", "site-rat4", "notes"):
        (tmp_path / name).mkdir()
    for name in ("site-rat1", "site-rat2", "site-rat4"):
        (tmp_path / name / "train.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"site-dirs: {tmp_path}/site-rat3 does not "
                                          rf"exist; did you mean {tmp_path}/site-rat2\?"):
        check_run_config(ROOT, f"num-sites=3 site-dirs='{tmp_path}/site-rat1,"
                               f"{tmp_path}/site-rat3,{tmp_path}/site-rat4'", local=True)
    with pytest.raises(ConfigError, match=rf"{tmp_path}/notes has no train.parquet "
                                          rf"\(a site folder"):  # nothing close to it
        check_run_config(ROOT, f"num-sites=1 site-dirs='{tmp_path}/notes'", local=True)


def test_site_dirs_without_test_files_are_named_before_anything_trains(tiny_polymnist,
                                                                        tmp_path):
    """The server evaluates the assembled model on the site folders joined by sample
    id: a folder without its test file would fail only after training."""
    import shutil

    site = tmp_path / "site-a"
    site.mkdir()
    shutil.copy(tiny_polymnist / "train.parquet", site / "train.parquet")
    text = f"num-sites=1 site-dirs='{site}'"
    with pytest.raises(ConfigError, match=r"site-dirs, joined for the server's evaluation "
                                          r"\(eval-data = 'default'\): no .*site-a/test"):
        check_run_config(ROOT, text, local=True)
    check_run_config(ROOT, text + " eval-data=''", local=True)  # no evaluation: fine
    # walkthrough: layout='horizontal' beside site-dirs was ignored without a word
    with pytest.raises(ConfigError, match=r"layout shape the look-alike the simulation "
                                          r"makes; with site-dirs each folder is one site "
                                          r"as prepared"):
        check_run_config(ROOT, text + " eval-data='' layout='horizontal'", local=True)
    # a hospital's n-train=100 n-test=40 trained on all 319 rows, unsaid
    with pytest.raises(ConfigError, match=r"n-train and n-test shape the look-alike .* "
                                          r"all its rows used, so drop n-train and n-test"):
        check_run_config(ROOT, text + " eval-data='' n-train=100 n-test=40", local=True)
    with pytest.raises(ConfigError, match=r"missing shape the look-alike"):  # a review
        check_run_config(ROOT, text + " eval-data='' missing=0.3", local=True)


def test_num_sites_is_the_site_dirs_count_unless_given(tmp_path, capsys):
    """Two walkthroughs were refused for num-sites=3 (the app's default) beside two
    site-dirs; mmvm run now counts them, and a num-sites given is kept (and checked)."""
    from mmvm.cli.run_config import with_site_count

    text = f"site-dirs='{tmp_path / 'a'},{tmp_path / 'b'}' exchange='step'"
    assert with_site_count(text) == text + " num-sites=2"
    assert "mmvm run: num-sites=2, the site-dirs' count" in capsys.readouterr().err
    assert with_site_count(text + " num-sites=3") == text + " num-sites=3"
    assert with_site_count("exchange='step'") == "exchange='step'"


def test_site_dirs_whose_images_the_config_does_not_take_are_named_before_flower(
        tiny_polymnist, tmp_path):
    """A site folder prepared at another size than the config's (64 vs 224 px) failed
    only at the sites' first message, after Flower and Ray had started."""
    import shutil

    site = tmp_path / "site-a"
    site.mkdir()
    for f in ("train.parquet", "test.parquet"):
        shutil.copy(tiny_polymnist / f, site / f)
    text = f"num-sites=1 site-dirs='{site}' eval-data=''"
    check_run_config(ROOT, text, local=True)  # the config's shapes: fine
    wrong = text + (" set='model.modalities.m0.kind=\"vector\";model.modalities.m0.network="
                    "\"mlp\";model.modalities.m0.shape=[2352]'")
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, wrong, local=True)
    assert str(info.value) == (
        f"run config: site-dirs: {site / 'train.parquet'}: m0 is [3, 28, 28] there, "
        f"[2352] in configs/polymnist_cpu.toml (model.modalities.m0.shape)")


def test_modalities_no_site_folder_holds_are_named_before_flower(tiny_polymnist,
                                                                  tmp_path):
    """A lab left two copied [model.modalities.ratN] sections in its config: the run
    failed ~20 s in ("no connected site holds modalities"), after Flower started."""
    import shutil

    site = tmp_path / "site-a"
    site.mkdir()
    for f in ("train.parquet", "test.parquet"):
        shutil.copy(tiny_polymnist / f, site / f)
    extra = ("model.modalities.rat4.kind=\"vector\";model.modalities.rat4.shape=[3];"
             "model.modalities.rat5.kind=\"vector\";model.modalities.rat5.shape=[3]")
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, f"num-sites=1 site-dirs='{site}' eval-data='' set='{extra}'",
                         local=True)
    assert str(info.value) == (
        "run config: site-dirs: modalities ['rat4', 'rat5'] of configs/polymnist_cpu.toml "
        "are in no site folder's files (they hold m0, m1, m2): remove their "
        "[model.modalities.<name>] sections from the config, or add the folders that "
        "hold them")


def test_a_label_column_no_site_folder_has_is_refused_before_flower(tmp_path):
    """A lab's folders held ``label.odor`` (``--label odor=...``), the config read
    ``label``: the run went through with no probes and a server error at the end (a
    warning before it was easy to miss: the neuroscience walkthrough did)."""
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(0)
    for m in ("m0", "m1", "m2"):  # the config's images
        np.save(tmp_path / f"{m}.npy", rng.integers(0, 256, (40, 3, 28, 28), np.uint8))
    np.save(tmp_path / "odor.npy", rng.integers(0, 2, 40))
    site = tmp_path / "lab"
    prepare_arrays(site, {m: tmp_path / f"{m}.npy" for m in ("m0", "m1", "m2")},
                   labels={"label.odor": tmp_path / "odor.npy"})
    text = f"num-sites=1 site-dirs='{site}' eval-data=''"
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, text, local=True)
    assert str(info.value).startswith(
        "run config: site-dirs: no site folder has the label column 'label' (data.label "
        "of configs/polymnist_cpu.toml); their label columns: label.odor.")
    assert "set='data.label=\"label.odor\"'" in str(info.value)
    check_run_config(ROOT, text + " set='data.label=\"label.odor\"'", local=True)


def test_site_dirs_that_number_their_classes_apart_are_refused_before_flower(tmp_path):
    """A hospital walkthrough: one site's CSV said 'Normal', the other's 'normal', so
    each numbered the findings otherwise; both files checked ok, the run trained to
    the end and then the server's evaluation on the joined folders failed."""
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(0)
    ids = "\n".join(f"s{i:03d}" for i in range(40)) + "\n"
    (tmp_path / "ids.txt").write_text(ids)
    for m in ("m0", "m1", "m2"):
        np.save(tmp_path / f"{m}.npy", rng.integers(0, 256, (40, 3, 28, 28), np.uint8))
    sites = []
    for name, normal, mods in (("a", "normal", ("m0", "m1")), ("b", "Normal", ("m2",))):
        np.save(tmp_path / f"f{name}.npy", np.array([normal, "effusion"] * 20))
        sites.append(tmp_path / f"site-{name}")
        prepare_arrays(sites[-1], {m: tmp_path / f"{m}.npy" for m in mods},
                       ids=tmp_path / "ids.txt", labels={"label": tmp_path / f"f{name}.npy"})
    text = f"num-sites=2 site-dirs='{sites[0]},{sites[1]}'"
    with pytest.raises(ConfigError, match=r"site-dirs, joined for the server's evaluation "
                                          r"\(eval-data = 'default'\): .* number the "
                                          r"classes of 'label' differently .*eval-data=''"):
        check_run_config(ROOT, text, local=True)
    check_run_config(ROOT, text + " eval-data=''", local=True)  # never joined: fine
