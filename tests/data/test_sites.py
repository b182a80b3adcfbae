"""mmvm.data.sites: layouts, seeded assignment, and split_sites' site files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmvm.data.sites import SiteSpec, assignment, site_layout, split_sites
from mmvm.data.store import DataError, read_site_table, write_site_table

MODS = ["a", "b", "c"]
N = 240


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """train/test files with a float32, a uint8 and a float32 modality plus labels."""
    root = tmp_path_factory.mktemp("full")
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", N), ("test", 60)):
        ids = [f"{split}-{i:04d}" for i in range(n)]
        tensors = {"a": rng.normal(size=(n, 2)).astype(np.float32),
                   "b": rng.integers(0, 256, (n, 1, 2, 2), dtype=np.uint8),
                   "c": rng.normal(size=(n, 3)).astype(np.float32)}
        labels = {"label": rng.integers(0, 4, n)}
        path = write_site_table(root / f"{split}.parquet", ids, tensors, labels,
                                {"source": "test"}, scales={"c": 2.0})
        data[split] = (path, ids, tensors, labels["label"])
    return data


def _records(files: dict, split: str):
    """(sample, modality) -> list of sites holding it; plus per-record values."""
    where: dict[tuple[str, str], list[str]] = {}
    values = {}
    for site, paths in files.items():
        t = read_site_table(paths[split])
        for m in t.modalities:
            for i, sid in enumerate(t.sample_ids):
                where.setdefault((sid, m), []).append(site)
                values[(sid, m)] = (t.tensors[m][i], t.scales[m], int(t.labels["label"][i]))
    return where, values


# ------------------------------------------------------------------------- layouts
def test_named_layouts():
    assert site_layout("vertical", MODS) == [SiteSpec("site-a", ("a",)), SiteSpec("site-b", ("b",)),
                                             SiteSpec("site-c", ("c",))]
    assert site_layout("horizontal", MODS, 3) == [SiteSpec(f"site-{k}", ("a", "b", "c"), k, 3)
                                                  for k in range(3)]
    assert site_layout("hybrid", MODS, 2) == [
        SiteSpec("site-a-0", ("a",), 0, 2), SiteSpec("site-a-1", ("a",), 1, 2),
        SiteSpec("site-b", ("b",)), SiteSpec("site-c", ("c",))]


@pytest.mark.parametrize("args, match", [
    (("diagonal", MODS), r"unknown site layout 'diagonal'; choose one of \['vertical'"),
    (("horizontal", MODS, 0), r"shards must be >= 2, got 0"),
    (("hybrid", MODS, -1), r"shards must be >= 2"),
    (("horizontal", MODS, 1), r"shards must be >= 2, got 1 \(with one shard it is a "
                              r"single site holding every sample\)"),
    (("hybrid", MODS, 1), r"shards must be >= 2, got 1 \(with one shard it is the "
                          r"vertical layout; use that\)"),
    (("horizontal", MODS, True), r"shards must be >= 2, got True"),
    (("vertical", []), r"distinct modality names"),
    (("vertical", ["a", "a"]), r"distinct modality names"),
])
def test_invalid_layouts_raise(args, match):
    with pytest.raises(ValueError, match=match):
        site_layout(*args)


@pytest.mark.parametrize("sites, match", [
    ([], r"no sites given"),
    ([SiteSpec("x", ("a",)), SiteSpec("x", ("b",))], r"site names must be unique"),
    ([SiteSpec("x", ())], r"site 'x' holds no modality"),
    ([SiteSpec("x", ("a",), 2, 2)], r"site 'x': shard 2 not in \[0, 2\)"),
    ([SiteSpec("x", ("a",), 0, 2)], r"modality 'a': its sites \['x'\] must hold shards 0\.\.n-1"),
    ([SiteSpec("x", ("a",)), SiteSpec("y", ("a",))], r"modality 'a'"),  # a held twice
    ([SiteSpec("x", ("a",), 0, 2), SiteSpec("y", ("a",), 1, 3)], r"modality 'a'"),
    # a site's folder goes next to sites.json and the split's hidden staging files
    ([SiteSpec("sites.json", ("a",))], r"site name 'sites\.json' is the layout's index"),
    ([SiteSpec(".split-x", ("a",))], r"site name '\.split-x' starts with '\.'"),
    ([SiteSpec("a/b", ("a",))], r"site name 'a/b' holds a path separator"),
])
def test_invalid_site_sets_raise(sites, match):
    with pytest.raises(ValueError, match=match):
        assignment(["s1", "s2"], sites)


@pytest.mark.parametrize("missing", [1.0, 1.5, -0.1])
def test_missing_fraction_out_of_range(missing):
    with pytest.raises(ValueError, match=r"missing fraction must be in \[0, 1\)"):
        assignment(["s1"], site_layout("vertical", MODS), missing)


# ---------------------------------------------------------------------- assignment
def test_missing_fraction_respected_and_no_empty_sample():
    ids = [f"id{i}" for i in range(3000)]
    for missing in (0.2, 0.5):
        held = assignment(ids, site_layout("vertical", MODS), missing, seed=3)
        assert held.any(1).all()  # every sample keeps a modality
        frac = 1 - held.mean(0)
        # each modality is dropped with prob. `missing`; the ones restored to
        # all-empty samples (prob. missing^3 each, one of three modalities) lower it a bit
        expect = missing - missing**3 / 3
        assert np.allclose(frac, expect, atol=0.035), (missing, frac)
    assert assignment(ids, site_layout("vertical", MODS), 0.0).all()


def test_assignment_is_a_function_of_seed_and_id():
    ids = [f"id{i}" for i in range(400)]
    sites = site_layout("hybrid", MODS, 3)
    a = assignment(ids, sites, 0.3, seed=1)
    assert np.array_equal(a, assignment(ids, sites, 0.3, seed=1))
    assert not np.array_equal(a, assignment(ids, sites, 0.3, seed=2))
    # per id, not per position: shuffling the ids shuffles the rows
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(assignment([ids[i] for i in perm], sites, 0.3, seed=1), a[perm])


def test_horizontal_shards_partition_samples():
    ids = [f"id{i}" for i in range(900)]
    held = assignment(ids, site_layout("horizontal", MODS, 3), seed=0)
    assert (held.sum(1) == 1).all()  # each sample in exactly one shard
    assert (np.abs(held.mean(0) - 1 / 3) < 0.06).all()  # roughly even


# --------------------------------------------------------------------- split_sites
@pytest.mark.parametrize("kind, missing", [
    ("vertical", 0.0), ("vertical", 0.3), ("horizontal", 0.0), ("hybrid", 0.0), ("hybrid", 0.3)])
def test_every_record_lands_in_exactly_one_site(source, tmp_path, kind, missing):
    sites = site_layout(kind, MODS, 2)
    files = split_sites([source["train"][0], source["test"][0]], tmp_path, sites,
                        missing=missing, seed=4)
    assert set(files) == {s.name for s in sites}
    for split in ("train", "test"):
        path, ids, tensors, labels = source[split]
        assert all(files[s.name][split] == str(tmp_path / s.name / f"{split}.parquet")
                   for s in sites)
        where, values = _records(files, split)
        assert all(len(v) == 1 for v in where.values())  # never in two sites
        expect = assignment(ids, [SiteSpec(f"_{m}", (m,)) for m in MODS], missing, seed=4)
        for i, sid in enumerate(ids):  # present exactly where the seeded mask says
            got = [(sid, m) in where for m in MODS]
            assert got == expect[i].tolist(), sid
            assert any(got)
            for m in MODS:
                if (sid, m) in where:
                    x, scale, label = values[(sid, m)]
                    assert np.array_equal(x, tensors[m][i])
                    assert scale == {"a": 1.0, "b": 255.0, "c": 2.0}[m]
                    assert label == labels[i]
        if missing == 0:
            assert len(where) == len(ids) * len(MODS)
        else:
            assert 0.1 < 1 - len(where) / (len(ids) * len(MODS)) < 0.4
    meta = json.loads((tmp_path / "sites.json").read_text())
    assert meta["missing"] == missing and meta["seed"] == 4 and meta["files"] == files
    assert [s["name"] for s in meta["sites"]] == [s.name for s in sites]
    site_meta = read_site_table(files[sites[0].name]["train"]).dataset_meta
    assert site_meta["source"] == str(source["train"][0]) and site_meta["split_seed"] == 4


def test_shards_partition_samples_in_files(source, tmp_path):
    files = split_sites(source["train"][0], tmp_path, site_layout("hybrid", MODS, 3), seed=1)
    shard_ids = [read_site_table(files[f"site-a-{k}"]["train"]).sample_ids for k in range(3)]
    all_ids = source["train"][1]
    assert sorted(sum(shard_ids, [])) == sorted(all_ids)
    assert all(len(s) > 0 for s in shard_ids)
    assert read_site_table(files["site-b"]["train"]).sample_ids == all_ids


def test_same_seed_same_split(source, tmp_path):
    sites = site_layout("hybrid", MODS, 2)
    f1 = split_sites(source["train"][0], tmp_path / "one", sites, missing=0.3, seed=7)
    f2 = split_sites(source["train"][0], tmp_path / "two", sites, missing=0.3, seed=7)
    f3 = split_sites(source["train"][0], tmp_path / "three", sites, missing=0.3, seed=8)
    ids = lambda f, s: read_site_table(f[s]["train"]).sample_ids  # noqa: E731
    assert all(ids(f1, s.name) == ids(f2, s.name) for s in sites)
    assert any(ids(f1, s.name) != ids(f3, s.name) for s in sites)


def test_horizontal_with_missing_is_refused_not_silently_dropped(source, tmp_path):
    with pytest.raises(ValueError, match=r"missing = 0\.3 needs one modality per site.*"
                                         r"\['site-0', 'site-1'\]"):
        split_sites(source["train"][0], tmp_path, site_layout("horizontal", MODS, 2),
                    missing=0.3)
    assert not list(tmp_path.iterdir())


def test_split_rejects_unknown_modality_and_missing_file(source, tmp_path):
    with pytest.raises(DataError, match=r"site 'site-z' wants modalities \['z'\]; "
                                        r"the file has \['a', 'b', 'c'\]"):
        split_sites(source["train"][0], tmp_path, site_layout("vertical", ["a", "z"]))
    with pytest.raises(DataError, match=r"nope\.parquet"):
        split_sites(tmp_path / "nope.parquet", tmp_path / "out", site_layout("vertical", MODS))


@pytest.mark.parametrize("name", ["sites.json", "SITES.json", ".split-1", ".hidden", ".."])
def test_a_reserved_site_name_is_refused_before_anything_is_written(source, tmp_path,
                                                                     name):
    """A site named sites.json made a folder where the index goes: every site file
    was in place when writing sites.json failed (a half-written layout)."""
    sites = [SiteSpec(name, ("a",)), SiteSpec("b", ("b",)), SiteSpec("c", ("c",))]
    with pytest.raises(ValueError, match=r"^site name "):
        split_sites([source["train"][0], source["test"][0]], tmp_path / "new", sites)
    assert not (tmp_path / "new").exists()


def test_a_site_left_without_rows_is_refused_when_asked_nothing_written(source, tmp_path):
    """With allow_empty=False (mmvm data split) a shard that draws no row is refused
    instead of written as an empty site file; an earlier layout stays as it was."""
    one = write_site_table(tmp_path / "one.parquet", ["s-0", "s-1", "s-2"],
                           {"a": np.zeros((3, 2), np.float32)}, None, {})
    out = tmp_path / "out"
    files = split_sites([source["train"][0]], out, site_layout("vertical", MODS))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(DataError) as info:
        split_sites([one], out, site_layout("horizontal", ["a"], 5), allow_empty=False)
    assert str(info.value).startswith(
        f"{one}: site 'site-") and "5 shards of 3 rows leave one empty: use at most 3 " \
        "shards; an empty site file can be neither trained nor evaluated on, so nothing " \
        "was written" in str(info.value)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert files == json.loads((out / "sites.json").read_text())["files"]
    # by chance: 3 shards of 3 rows, drawn from the ids, leave one empty for this seed
    seed = next(k for k in range(50) if not assignment(
        ["s-0", "s-1", "s-2"], site_layout("horizontal", ["a"], 3), seed=k).any(0).all())
    with pytest.raises(DataError, match=r"drew none of the 3 rows \(a row's shard "
                                        r"follows from its sample id and the seed\): "
                                        r"use fewer shards or another seed"):
        split_sites([one], tmp_path / "new", site_layout("horizontal", ["a"], 3),
                    seed=seed, allow_empty=False)
    assert not (tmp_path / "new").exists()
    # the library's default still writes it (the store reads empty files)
    written = split_sites([one], tmp_path / "lib", site_layout("horizontal", ["a"], 5))
    assert min(len(read_site_table(f["one"])) for f in written.values()) == 0


def test_a_split_that_fails_partway_writes_no_file(source, tmp_path):
    """The train file splits; the test file after it lacks a modality: no site's
    train file is left behind (a partial layout), in a new or an existing folder."""
    bad = write_site_table(tmp_path / "test.parquet", ["t-0"],
                           {"a": np.zeros((1, 2), np.float32)}, None, {})
    for out in (tmp_path / "new", tmp_path):
        with pytest.raises(DataError, match=r"site 'site-b' wants modalities \['b'\]"):
            split_sites([source["train"][0], bad], out, site_layout("vertical", MODS))
        assert not out.exists() if out.name == "new" else \
            sorted(p.name for p in out.iterdir()) == ["test.parquet"]
    files = split_sites([source["train"][0]], tmp_path / "ok", site_layout("vertical", MODS))
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "site-a", "site-b", "site-c", "sites.json"]  # no staging folder left
    assert read_site_table(files["site-b"]["train"]).modalities == ["b"]
