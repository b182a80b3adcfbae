"""prepare images: a site's own folders of image files (one per modality) and a CSV
of labels -> site Parquet files, paired with other sites by file name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmvm.cli import main
from mmvm.data.prepare.image_folder import prepare_images
from mmvm.data.store import DataError, read_site_meta, read_site_table

N = 40


def _views(tmp_path) -> dict:
    """Frontal and lateral PNGs of 40 studies (20 patients), 48 px, and their table;
    the enlarged heart (cardiomegaly) is a brighter square in both views."""
    rng = np.random.default_rng(0)
    cardio = rng.integers(0, 2, N)
    for view in ("frontal", "lateral"):
        (tmp_path / view).mkdir()
        for i in range(N):
            img = rng.integers(0, 60, (48, 48)).astype(np.uint8)
            img[16:32, 16:32] += np.uint8(150 * cardio[i])
            Image.fromarray(img).save(tmp_path / view / f"s{i:03d}.png")
    rows = ["sample_id,finding,patient"] + [
        f"s{i:03d},{'cardiomegaly' if cardio[i] else 'normal'},p{i // 2}"
        for i in range(N - 1)]  # s039 unlisted: unknown label (and no group)
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    return {"cardio": cardio}


def test_two_sites_views_pair_by_file_name_and_split_by_patient(tmp_path):
    truth = _views(tmp_path)
    table = tmp_path / "table.csv"
    (tmp_path / "table_all.csv").write_text(table.read_text() + "s039,normal,p19\n")
    paths = {v: prepare_images(tmp_path / f"site-{v}", {v: tmp_path / v}, size=28,
                               table=tmp_path / "table_all.csv", labels=["finding"],
                               group_column="patient") for v in ("frontal", "lateral")}
    splits = {}
    for v, p in paths.items():
        meta = read_site_meta(p["train"])
        assert list(meta["tensors"][v]["shape"]) == [1, 28, 28]
        assert meta["dataset"]["label_names"] == {"label.finding": ["cardiomegaly",
                                                                    "normal"]}
        for split in ("train", "test"):
            t = read_site_table(p[split])
            splits[v, split] = set(t.sample_ids)
            want = [0 if truth["cardio"][int(s[1:])] else 1 for s in t.sample_ids]
            assert t.labels["label.finding"].tolist() == want
    # the same studies in the same split at both sites, and no patient on both sides
    assert splits["frontal", "test"] == splits["lateral", "test"]
    patients = {split: {int(s[1:]) // 2 for s in splits["frontal", split]}
                for split in ("train", "test")}
    assert not patients["train"] & patients["test"]


def test_a_sample_the_table_lacks_has_unknown_labels_but_needs_its_group(tmp_path):
    _views(tmp_path)
    p = prepare_images(tmp_path / "out", {"frontal": tmp_path / "frontal"}, size=28,
                       mode="RGB", table=tmp_path / "table.csv", labels=["finding"])
    rows = {s: y for split in ("train", "test")
            for s, y in zip(read_site_table(p[split]).sample_ids,
                            read_site_table(p[split]).labels["label.finding"],
                            strict=True)}
    assert rows["s039"] == -1 and len(rows) == N
    assert list(read_site_meta(p["train"])["tensors"]["frontal"]["shape"]) == [3, 28, 28]
    with pytest.raises(DataError, match=r"no 'patient' for samples \['s039'\]"):
        prepare_images(tmp_path / "g", {"frontal": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "table.csv", group_column="patient")


def test_mistakes_are_named(tmp_path):
    _views(tmp_path)
    (tmp_path / "lateral" / "s000.png").rename(tmp_path / "lateral" / "x000.png")
    with pytest.raises(DataError, match="hold other sample ids"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal",
                                        "l": tmp_path / "lateral"}, size=28)
    with pytest.raises(DataError, match=r"no column 'findings'; its columns"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "table.csv", labels=["findings"])
    with pytest.raises(DataError, match="no column 'id' of sample ids"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "table.csv", id_column="id")
    (tmp_path / "frontal" / "s001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="would both be sample 's001'"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=28)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_the_command_prints_the_config_sections(tmp_path, capsys):
    _views(tmp_path)
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/frontal",
                 "--size", "28", "--table", f"{tmp_path}/table.csv", "--label", "finding",
                 "--out", f"{tmp_path}/site", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert '[model.modalities.frontal]\nkind = "image"\nshape = [1, 28, 28]' in out
    assert "# label.finding: 0 = cardiomegaly, 1 = normal" in out
    assert "give --group-column" in out


def _png16(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)  # Pillow writes I;16 PNG


def test_16_bit_x_rays_are_scaled_not_clipped_to_white(tmp_path):
    """Pillow's convert("L") clips every value above 255: a 16-bit PNG X-ray became a
    white silhouette, its lesion gone, and the preparer said nothing."""
    (tmp_path / "wide").mkdir()
    img = np.full((28, 28), 20000.0)
    img[8:16, 8:16] = 60000.0  # the lesion, brighter than its body
    for i in range(6):
        _png16(tmp_path / "wide" / f"s{i}.png", img)
    p = prepare_images(tmp_path / "out", {"frontal": tmp_path / "wide"}, size=28,
                       test_fraction=0.34)
    x = read_site_table(p["train"]).tensors["frontal"][0, 0]
    assert x[0, 0] == round(20000 / 65535 * 255) and x[12, 12] == round(60000 / 65535 * 255)


def test_a_folder_of_12_and_16_bit_exports_reads_each_at_its_own_white(tmp_path, capsys):
    """A hospital's folder mixed 16-bit and 12-bit-in-16-bit exports: one
    --white-level could not prepare it. And two corrupt files cost two reruns."""
    (tmp_path / "wide").mkdir()
    full, twelve = np.full((28, 28), 40000.0), np.full((28, 28), 2000.0)
    for i in range(6):
        _png16(tmp_path / "wide" / f"s{i}.png", full if i % 2 else twelve)
    p = prepare_images(tmp_path / "out", {"frontal": tmp_path / "wide"}, size=28,
                       test_fraction=0.34, white="auto")
    got = {i: x[0, 0, 0] for t in (read_site_table(p["train"]), read_site_table(p["test"]))
           for i, x in zip(t.sample_ids, t.tensors["frontal"], strict=True)}
    assert got["s1"] == round(40000 / 65535 * 255) and got["s0"] == round(2000 / 4095 * 255)
    said = read_site_meta(p["train"])["dataset"]["notes"]
    assert ("frontal: images of more than 8 bits read at white levels 4095 (3), 65535 "
            "(3): a dark export read at a lower one is brightened; check them") in said
    Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(tmp_path / "f.tif")
    from mmvm.data.prepare.images import load_image

    with pytest.raises(DataError, match=r"f.tif: a floating-point image \(F\): "
                                        r"--white-level auto reads integer exports only"):
        load_image(tmp_path / "f.tif", "L", 28, white="auto")
    for bad in ("s2", "s4"):
        (tmp_path / "wide" / f"{bad}.png").write_bytes(b"not a png")
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/wide",
                 "--size", "28", "--white-level", "auto", "--out", f"{tmp_path}/o2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "2 of the 6 frontal images cannot be used; fix or remove them" in err
    assert "s2.png: cannot decode image" in err and "s4.png: cannot decode image" in err
    assert not (tmp_path / "o2" / "train.parquet").exists()


def test_12_bit_data_in_16_bit_files_needs_its_white_level(tmp_path):
    (tmp_path / "wide").mkdir()
    img = np.full((28, 28), 1000.0)
    img[8:16, 8:16] = 4000.0
    for i in range(6):
        _png16(tmp_path / "wide" / f"s{i}.png", img)
    with pytest.raises(DataError, match=r"s0.png: refused: a I;16 image whose brightest "
                                        r"pixel is 4000, below 4096 of 65535: 12-bit data "
                                        r"in a 16-bit file\? Give the value that is white "
                                        r"\(--white-level 4095") as info:
        prepare_images(tmp_path / "o", {"frontal": tmp_path / "wide"}, size=28)
    assert "cannot decode" not in str(info.value)  # it decoded: a walkthrough read that
    assert not (tmp_path / "o").exists()
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/wide",
                 "--size", "28", "--white-level", "4095", "--test-fraction", "0.34",
                 "--out", f"{tmp_path}/site", "--quiet"]) == 0
    x = read_site_table(tmp_path / "site" / "train.parquet").tensors["frontal"][0, 0]
    assert x[0, 0] == round(1000 / 4095 * 255) and x[12, 12] == round(4000 / 4095 * 255)
    with pytest.raises(DataError, match=r"pixel values 1000\.\.4000 outside 0\.\.2000"):
        prepare_images(tmp_path / "o", {"frontal": tmp_path / "wide"}, size=28, white=2000)


def test_a_table_that_names_none_of_the_images_is_refused(tmp_path):
    """Files s000_lat.png against a table keyed s000: every label was unknown, and
    nothing said so."""
    _views(tmp_path)
    for f in (tmp_path / "lateral").iterdir():
        f.rename(f.with_name(f.stem + "_lat.png"))
    with pytest.raises(DataError, match=r"none of the 40 images' sample ids \(e\.g\. "
                                        r"'s000_lat', from its file name\) is in the "
                                        r"table's 'sample_id' column \(e\.g\. 's000'\)"):
        prepare_images(tmp_path / "o", {"lateral": tmp_path / "lateral"}, size=28,
                       table=tmp_path / "table.csv", labels=["finding"])


def test_64_px_images_are_given_the_residual_network(tmp_path, capsys):
    """cub_image was printed first (the first registered network to take 64 px): on
    grey 64 px X-ray look-alikes it left the probe at 0.65 where res_image reached
    0.99."""
    _views(tmp_path)
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/frontal",
                 "--size", "64", "--out", f"{tmp_path}/site", "--quiet"]) == 0
    assert 'shape = [1, 64, 64]\nnetwork = "res_image"' in capsys.readouterr().out


def test_what_decoding_changed_and_ids_that_do_not_match_are_said(tmp_path, capsys):
    """Mixed sizes, a colour image among grey ones and ids the table and the folder
    do not share were changed or dropped without a word (walkthrough with own data)."""
    _views(tmp_path)
    Image.fromarray(np.zeros((40, 32), np.uint8)).save(tmp_path / "frontal" / "s001.png")
    red = np.zeros((48, 48, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(tmp_path / "frontal" / "s002.png")
    rows = (tmp_path / "table.csv").read_text().replace("s003,", "s0O3,")  # a typo
    (tmp_path / "typo.csv").write_text(rows)
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/frontal",
                 "--size", "28", "--table", f"{tmp_path}/typo.csv", "--label", "finding",
                 "--out", f"{tmp_path}/site", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (f"note: {tmp_path}/typo.csv: 1 of its 39 rows names no image here (e.g. "
            f"'s0O3'): their labels are not used") in out
    assert (f"note: 2 of the 40 images are not in {tmp_path}/typo.csv (e.g. 's003', "
            f"'s039'): their labels are unknown") in out
    assert ("note: frontal: images of 2 sizes, width x height (48x48: 39, 32x40: 1) "
            "resized to 28x28; "
            "1 non-square one stretched (--fit pad or crop keeps their proportions)") in out
    assert ("note: frontal: 1 of 40 images were colour (RGB: 1), made grey (--mode RGB "
            "keeps colour)") in out
    assert main(["data", "prepare", "images", "--modality", f"frontal={tmp_path}/frontal",
                 "--size", "28", "--fit", "pad", "--out", f"{tmp_path}/site", "--force",
                 "--quiet"]) == 0
    assert "1 non-square one padded with black to a square" in capsys.readouterr().out


def test_a_non_square_image_keeps_its_proportions_padded_or_cropped(tmp_path):
    """A hospital's 80 x 64 views were stretched to squares: the heart's width against
    the chest's, how cardiomegaly is read, changed. A white disc in a wide image stays
    round padded (centred on black), and cropping keeps the central square."""
    from mmvm.data.prepare.images import conversion_notes, load_image

    yy, xx = np.mgrid[:64, :128]
    disc = (((xx - 64) ** 2 + (yy - 32) ** 2) <= 20 ** 2).astype(np.uint8) * 255
    path = tmp_path / "wide.png"
    Image.fromarray(disc).save(path)
    padded = load_image(path, "L", 64, fit="pad")[0]
    assert padded.shape == (64, 64) and (padded[:16] == 0).all() and (padded[48:] == 0).all()
    rows, cols = np.nonzero(padded > 127)
    width, height = np.ptp(cols) + 1, np.ptp(rows) + 1  # 20 px radius at half scale
    assert abs(width - height) <= 1 and 19 <= width <= 22
    stretched = load_image(path, "L", 64)[0]
    rows, cols = np.nonzero(stretched > 127)
    assert np.ptp(rows) + 1 >= 1.8 * (np.ptp(cols) + 1)  # squashed sideways: an ellipse
    cropped = load_image(path, "L", 64, fit="crop")[0]  # the central 64 x 64, as it was
    np.testing.assert_array_equal(cropped, disc[:, 32:96])
    from collections import Counter

    seen = Counter({("L", (128, 64)): 1, ("L", (64, 64)): 3})
    assert conversion_notes("frontal", seen, "L", 64, "pad")[0].endswith(
        "1 non-square one padded with black to a square, proportions kept (--fit pad)")
    with pytest.raises(ValueError, match="fit 'squash': one of stretch, pad, crop"):
        load_image(path, "L", 64, fit="squash")


def test_a_table_saved_with_semicolons_is_read(tmp_path):
    """A spreadsheet export separated by ';' read as one column 'sample_id;finding;...'."""
    truth = _views(tmp_path)
    text = (tmp_path / "table.csv").read_text().replace(",", ";")
    # a quoted header name with a comma in it (a review): still ';'
    text = text.replace("sample_id;finding;patient", 'sample_id;finding;"patient, id"')
    (tmp_path / "semi.csv").write_text(text)
    p = prepare_images(tmp_path / "o", {"frontal": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "semi.csv", labels=["finding"])
    t = read_site_table(p["train"])
    names = t.dataset_meta["label_names"]["label.finding"]
    for i, y in zip(t.sample_ids, t.labels["label.finding"], strict=True):
        if i != "s039":
            assert names[y] == ("cardiomegaly" if truth["cardio"][int(i[1:])] else "normal")


def test_a_size_no_network_takes_and_an_unquoted_comma_are_refused(tmp_path):
    _views(tmp_path)
    with pytest.raises(DataError, match=r"--size 32: no image network takes 32x32 "
                                        r"images \(conv28 takes \[C, 28, 28\];.*"
                                        r"res_image takes \[C, 64, 64\] or \[C, 224"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=32)
    rows = (tmp_path / "table.csv").read_text().replace("s004,normal,", "s004,normal, small,")
    (tmp_path / "comma.csv").write_text(rows)
    with pytest.raises(DataError, match=r"comma.csv: line 6 has 4 fields, the header 3: "
                                        r"an unquoted comma in a value\?"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "comma.csv")
    assert not (tmp_path / "o").exists()


def test_a_colour_jpeg_is_noted_at_its_own_size_and_grey_rgb_is_not_colour(tmp_path):
    """JPEGs are decoded in draft mode, which shrank and greyed them before they were
    counted: a 384x512 colour JPEG was noted as a 48x64 grey one."""
    from collections import Counter

    from mmvm.data.prepare.images import conversion_notes, load_image

    rgb = np.zeros((512, 384, 3), np.uint8)
    rgb[..., 0] = 200  # red: colour
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    grey = np.repeat(np.arange(64, dtype=np.uint8)[:, None, None], 3, 2) * np.ones(
        (1, 64, 1), np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=95)
    Image.fromarray(grey).save(tmp_path / "grey.png")  # an X-ray exported as RGB
    seen = Counter()
    for name in ("colour.jpg", "grey.jpg", "grey.png"):
        assert load_image(tmp_path / name, "L", 64, seen=seen).shape == (1, 64, 64)
    assert seen == Counter({("RGB", (384, 512)): 1, ("grey RGB", (64, 64)): 2})
    notes = conversion_notes("frontal", seen, "L", 64)
    assert "frontal: 1 of 3 images were colour (RGB: 1), made grey" in notes[1]
    assert notes[0].startswith("frontal: images of 2 sizes, width x height (64x64: 2, "
                               "384x512: 1)")


def test_a_short_row_is_named_and_a_spreadsheets_empty_rows_are_skipped(tmp_path):
    _views(tmp_path)
    text = (tmp_path / "table.csv").read_text()
    (tmp_path / "empty_rows.csv").write_text(text + ",,\n,,\n")  # an Excel export
    p = prepare_images(tmp_path / "ok", {"f": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "empty_rows.csv", labels=["finding"])
    assert read_site_meta(p["train"])["num_rows"] > 0
    (tmp_path / "short.csv").write_text(text.replace("s004,normal,p2", "s004,normal"))
    with pytest.raises(DataError, match=r"short.csv: line 6 has 2 fields, the header 3: "
                                        r"leave a missing value empty, but keep its comma"):
        prepare_images(tmp_path / "o", {"f": tmp_path / "frontal"}, size=28,
                       table=tmp_path / "short.csv")


def test_8_bit_images_beside_16_bit_ones_are_noted(tmp_path):
    """Two exports of one view (a PACS's 16-bit PNGs, someone's 8-bit ones) are each
    scaled to 8 bits as their file type says; the mix is noted, since the two
    exports' grey levels need not agree."""
    from collections import Counter

    from mmvm.data.prepare.images import conversion_notes, load_image

    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "narrow.png")
    seen = Counter()
    for name in ("wide.png", "narrow.png", "narrow.png"):
        load_image(tmp_path / name, "L", 32, seen=seen)
    (wide_mode,) = {m for m, _ in seen if m != "L"}
    notes = conversion_notes("frontal", seen, "L", 32)
    assert notes == [f"frontal: 1 of 3 images had more than 8 bits a pixel "
                     f"({wide_mode}: 1), scaled to 8 bits by their white level; the "
                     f"other 2 were 8-bit, kept as they are: two exports? Check that "
                     f"their grey levels look alike"]
    only_wide = Counter({(wide_mode, (64, 64)): 2})
    assert conversion_notes("frontal", only_wide, "L", 32) == []  # one export: no note


def test_skip_bad_leaves_out_the_samples_of_unusable_images_in_every_view(tmp_path,
                                                                          capsys):
    """A hospital's export of 40 studies with a truncated frontal PNG and a lateral
    one that is not an image: with --skip-bad both studies leave the site (its views
    must hold the same samples), the rest is prepared as it would be without them,
    and the note names both files."""
    _views(tmp_path)
    (tmp_path / "frontal" / "s007.png").write_bytes(
        (tmp_path / "frontal" / "s007.png").read_bytes()[:40])
    (tmp_path / "lateral" / "s012.png").write_bytes(b"not a png")
    args = ["data", "prepare", "images", "--modality", f"frontal={tmp_path}/frontal",
            "--modality", f"lateral={tmp_path}/lateral", "--size", "28", "--table",
            f"{tmp_path}/table.csv", "--label", "finding", "--quiet"]
    assert main([*args, "--out", f"{tmp_path}/refused"]) == 2
    err = capsys.readouterr().err
    assert "1 of the 40 frontal images and 1 of the 40 lateral images cannot be used" \
        in err and "--skip-bad" in err
    assert main([*args, "--skip-bad", "--out", f"{tmp_path}/site"]) == 0
    out = capsys.readouterr().out
    assert "2 of the 40 samples left out (--skip-bad)" in out
    assert "s007.png" in out and "s012.png" in out
    ids = [s for split in ("train", "test") for s in
           read_site_table(tmp_path / "site" / f"{split}.parquet").sample_ids]
    assert sorted(ids) == [f"s{i:03d}" for i in range(N) if i not in (7, 12)]
    for split in ("train", "test"):
        t = read_site_table(tmp_path / "site" / f"{split}.parquet")
        for sid, x in zip(t.sample_ids, t.tensors["lateral"], strict=True):
            want = np.array(Image.open(tmp_path / "lateral" / f"{sid}.png").resize(
                (28, 28), Image.Resampling.BICUBIC))
            assert (np.asarray(x)[0] == want).all()
    assert "left out" in " ".join(read_site_meta(tmp_path / "site" / "train.parquet")
                                  ["dataset"]["notes"])
