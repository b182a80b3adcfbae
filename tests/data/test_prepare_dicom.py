"""DICOM X-rays read as their headers say (mmvm.data.prepare.dicom), checked against
the DICOM standard's formulas on files pydicom writes, and a site prepared from them."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid

from mmvm.cli import main
from mmvm.data.prepare.image_folder import image_files
from mmvm.data.prepare.images import load_image
from mmvm.data.store import DataError, read_site_table

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 4096, (24, 32)).astype(np.uint16)  # 12 bits stored in 16


def _dicom(path, arr: np.ndarray = PIXELS, kind: str = "MONOCHROME2", bits: int = 12,
           **header) -> Dataset:
    """A DX image file as a PACS exports it, uncompressed; ``header``: more elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, for presentation
    ds.PatientName, ds.StudyInstanceUID = "Doe^Jane", generate_uid()
    ds.set_pixel_data(arr, kind, bits)
    for key, value in header.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _read(path, **kw) -> np.ndarray:
    """The image as the preparer stores it, at its own size (no resize)."""
    return load_image(path, "L", **kw)[0].astype(np.int64)


def _scaled(values, lo: float, hi: float) -> np.ndarray:
    return np.round((np.asarray(values, float) - lo) / (hi - lo) * 255).astype(np.int64)


def test_12_bit_pixels_are_scaled_by_the_stored_bits_and_monochrome1_inverted(tmp_path):
    """No guess from the brightest pixel: BitsStored says white is 4095, and a
    MONOCHROME1 file (0 is white) reads as the same X-ray, bone white."""
    _dicom(tmp_path / "m2.dcm")
    _dicom(tmp_path / "m1.dcm", 4095 - PIXELS, kind="MONOCHROME1")
    want = _scaled(PIXELS, 0, 4095)
    assert (_read(tmp_path / "m2.dcm") == want).all()
    assert np.abs(_read(tmp_path / "m1.dcm") - want).max() <= 1  # 255 - round(255 - v)


def test_the_header_window_is_applied_as_the_standard_says(tmp_path):
    """VOI LUT, LINEAR (PS3.3 C.11.2.1.2.1): below c - 0.5 - (w - 1) / 2 is the
    lowest output, above c - 0.5 + (w - 1) / 2 the highest, linear between;
    ``window = "none"`` reads the stored range instead."""
    c, w = 2048.0, 1024.0
    _dicom(tmp_path / "w.dcm", WindowCenter=c, WindowWidth=w)
    x = PIXELS.astype(float)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 4095
    y[x <= c - 0.5 - (w - 1) / 2] = 0
    y[x > c - 0.5 + (w - 1) / 2] = 4095
    assert (_read(tmp_path / "w.dcm") == _scaled(y, 0, 4095)).all()
    assert (_read(tmp_path / "w.dcm", window="none") == _scaled(PIXELS, 0, 4095)).all()


def test_a_rescale_and_signed_pixels_keep_the_stored_range(tmp_path):
    """The Modality LUT maps the stored range with the pixels: without a window the
    image is the same; signed 12-bit pixels span -2048..2047."""
    _dicom(tmp_path / "r.dcm", RescaleSlope=2.0, RescaleIntercept=-1024.0)
    assert (_read(tmp_path / "r.dcm") == _scaled(PIXELS, 0, 4095)).all()
    signed = PIXELS.astype(np.int16) - 2048
    _dicom(tmp_path / "s.dcm", signed)
    assert (_read(tmp_path / "s.dcm") == _scaled(signed, -2048, 2047)).all()


def test_a_white_level_replaces_the_headers_top(tmp_path):
    _dicom(tmp_path / "a.dcm")
    got = _read(tmp_path / "a.dcm", white=2047.0)
    assert (got == np.minimum(_scaled(PIXELS, 0, 2047), 255)).all()


def test_jpeg_2000_and_colour_files_are_read(tmp_path):
    """JPEG 2000 (lossless; a common PACS export) decodes to the stored pixels, the
    same image as the uncompressed file; an 8-bit RGB file keeps its colours."""
    buf = io.BytesIO()
    Image.fromarray(PIXELS).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    ds = _dicom(tmp_path / "plain.dcm")
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    assert (_read(tmp_path / "j2k.dcm") == _read(tmp_path / "plain.dcm")).all()
    rgb = RNG.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    _dicom(tmp_path / "rgb.dcm", rgb, kind="RGB", bits=8)
    assert (load_image(tmp_path / "rgb.dcm", "RGB") == rgb.transpose(2, 0, 1)).all()


def test_what_is_not_one_image_is_refused_by_file(tmp_path):
    _dicom(tmp_path / "cine.dcm", np.stack([PIXELS] * 3))
    ds = _dicom(tmp_path / "sr.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file")
    ds = _dicom(tmp_path / "ls.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # no JPEG-LS decoder installed
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "ls.dcm", enforce_file_format=True)
    said = {"cine": "3 frames", "sr": "without an image", "junk": "not a readable DICOM",
            "ls": "pylibjpeg"}
    for name, words in said.items():
        with pytest.raises(DataError, match=words) as err:
            load_image(tmp_path / f"{name}.dcm", "L", 28)
        assert f"{name}.dcm" in str(err.value)


def test_a_pacs_export_prepares_a_site(tmp_path, capsys):
    """A folder of DICOM files, some without a suffix (IM0003), beside a stray text
    file: every image found by its content, prepared, and how they were read said."""
    folder = tmp_path / "frontal"
    folder.mkdir()
    images = {}
    for i in range(8):
        images[f"IM{i:04d}"] = RNG.integers(0, 4096, (28, 28)).astype(np.uint16)
        name = f"IM{i:04d}" + (".dcm" if i % 2 else "")
        kind = "MONOCHROME1" if i == 3 else "MONOCHROME2"
        stored = 4095 - images[f"IM{i:04d}"] if kind == "MONOCHROME1" else images[f"IM{i:04d}"]
        _dicom(folder / name, stored, kind=kind)
    (folder / "README").write_text("exported from the PACS on Monday\n")
    assert sorted(image_files(folder)) == sorted(images)
    (tmp_path / "t.csv").write_text("sample_id,finding\n" + "".join(
        f"IM{i:04d},{'effusion' if i % 3 else 'normal'}\n" for i in range(8)))
    assert main(["data", "prepare", "images", "--modality", f"frontal={folder}",
                 "--size", "28", "--table", str(tmp_path / "t.csv"), "--dicom-window",
                 "none", "--test-fraction", "0.25", "--out", str(tmp_path / "site"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 images were DICOM" in out and "1 MONOCHROME1 inverted" in out
    table = read_site_table(tmp_path / "site" / "train.parquet")
    for sid, x in zip(table.sample_ids, table.tensors["frontal"], strict=True):
        got = np.asarray(x, np.int64)[0]
        assert np.abs(got - _scaled(images[sid], 0, 4095)).max() <= (sid == "IM0003")
    assert pydicom.dcmread(folder / "IM0000").PatientName == "Doe^Jane"
    raw = (tmp_path / "site" / "train.parquet").read_bytes()
    assert b"Doe^Jane" not in raw  # the header stays at the PACS: pixels only


def test_a_window_keeps_its_white_and_a_folder_of_both_kinds_is_noted(tmp_path, capsys):
    """A hospital walkthrough: --white-level 4095 (the advice for 12-bit PNGs) moved
    a windowed, rescaled file's white and washed its lungs out. The window says where
    white is: the level scales unwindowed files only, and the note says which."""
    _dicom(tmp_path / "w.dcm", WindowCenter=2048.0, WindowWidth=1024.0,
           RescaleSlope=2.0, RescaleIntercept=-100.0)
    assert (_read(tmp_path / "w.dcm", white=4095.0) == _read(tmp_path / "w.dcm")).all()
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(6):
        header = {"WindowCenter": 2048.0, "WindowWidth": 1024.0} if i < 4 else {}
        _dicom(folder / f"s{i}.dcm", **header)
    assert main(["data", "prepare", "images", "--modality", f"frontal={folder}",
                 "--size", "28", "--white-level", "4095", "--test-fraction", "0.34",
                 "--out", str(tmp_path / "site"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 scaled by the header's VOI window, 2 over the stored bits' range (2 up " \
           "to --white-level)" in out
    assert "windowed and unwindowed images differ in contrast" in out


def test_an_export_named_by_uid_with_a_dicomdir_and_subfolders(tmp_path, capsys):
    """Files named by UID (the text after the last dot is no suffix) are DICOM by
    content and keep their whole name as id; the DICOMDIR index is no sample; a
    nested series is said not to be read; and a new image read with the files'
    recorded settings (image_preparation) is the row the site file holds."""
    folder = tmp_path / "frontal"
    (folder / "p1" / "s1").mkdir(parents=True)
    uids = [f"1.2.840.113619.2.55.3.60468{i}" for i in range(6)]
    wide = RNG.integers(0, 4096, (40, 32)).astype(np.uint16)  # not square: padded
    for uid in uids:
        _dicom(folder / uid, wide, WindowCenter=2000.0, WindowWidth=3000.0)
    _dicom(folder / "p1" / "s1" / "IM0001.dcm")
    ds = _dicom(tmp_path / "dicomdir.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(folder / "DICOMDIR", enforce_file_format=True)
    ds.save_as(tmp_path / "index.dcm", enforce_file_format=True)
    assert sorted(image_files(folder)) == uids
    with pytest.raises(DataError, match="a DICOMDIR, the export's index"):
        load_image(tmp_path / "index.dcm", "L", 28)
    assert main(["data", "prepare", "images", "--modality", f"frontal={folder}",
                 "--size", "28", "--fit", "pad", "--test-fraction", "0.34",
                 "--out", str(tmp_path / "site"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 subfolder (p1): images are read from the folder itself" in out
    from mmvm.data.store import read_site_meta

    prep = read_site_meta(tmp_path / "site" / "train.parquet")["dataset"][
        "image_preparation"]
    assert prep == {"mode": "L", "size": 28, "fit": "pad", "white": None,
                    "window": "file"}
    t = read_site_table(tmp_path / "site" / "train.parquet")
    again = load_image(folder / t.sample_ids[0], **prep)
    assert (np.asarray(t.tensors["frontal"][0]) == again).all()
    assert (again != load_image(folder / t.sample_ids[0], "L", 28)).any()  # stretched


def test_a_file_cut_anywhere_is_refused_by_name(tmp_path):
    """A review cut a file at every byte: at 11 offsets inside the header pydicom
    raised struct.error, which stopped a whole site's preparation, --skip-bad too."""
    whole = _dicom(tmp_path / "whole.dcm", PIXELS[:4, :4]) and \
        (tmp_path / "whole.dcm").read_bytes()
    for cut in range(132, len(whole)):
        (tmp_path / "cut.dcm").write_bytes(whole[:cut])
        with pytest.raises(DataError, match="cut.dcm: "):
            load_image(tmp_path / "cut.dcm", "L")


def test_a_negative_slope_a_voi_table_and_padding_read_as_a_viewer_shows_them(tmp_path):
    """A review: pydicom's windowing maps onto the rescaled range, which a negative
    slope turns upside down (the windowed image came out inverted); a VOI table
    declared 16-bit with 12-bit entries left the image at 16 of 255 grey levels; and a
    MONOCHROME1 collimator border padded with 0 came out white."""
    _dicom(tmp_path / "plain.dcm", RescaleSlope=-1.0, RescaleIntercept=4095.0)
    _dicom(tmp_path / "w.dcm", RescaleSlope=-1.0, RescaleIntercept=4095.0,
           WindowCenter=2048.0, WindowWidth=4096.0)
    plain, win = _read(tmp_path / "plain.dcm"), _read(tmp_path / "w.dcm")
    assert np.corrcoef(plain.ravel(), win.ravel())[0, 1] > 0.99
    assert np.corrcoef(plain.ravel(), PIXELS.ravel())[0, 1] < -0.99  # the slope's sign

    ds = _dicom(tmp_path / "lut.dcm")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # entries for 0..4095, declared 16 bits
    item.add_new(0x00283006, "US", list(range(4096)))  # LUT Data: 12-bit, the identity
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    got = _read(tmp_path / "lut.dcm")
    assert got.max() == 255 and (got == _scaled(PIXELS, 0, 4095)).all()

    border = PIXELS.copy()
    border[:, :4] = 0  # the collimator's edge, stored as the padding value
    _dicom(tmp_path / "pad.dcm", border, kind="MONOCHROME1", PixelPaddingValue=0)
    got = _read(tmp_path / "pad.dcm")
    assert (got[:, :4] == 0).all() and got[:, 4:].mean() > 50
