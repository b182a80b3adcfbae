"""mmvm.data.labels: label columns read by sample id, apart from the tensors."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.data.labels import label_columns, read_labels
from mmvm.data.store import DataError, write_site_table


def _site(path, ids, name, labels):
    x = np.zeros((len(ids), 2), np.float32)
    return write_site_table(path, ids, {name: x},
                            {k: np.asarray(v, np.int64) for k, v in labels.items()}, {})


def test_patterns_expand_in_file_order_once(tmp_path):
    a = _site(tmp_path / "a.parquet", ["1", "2"], "m",
              {"label.b": [0, 1], "label.a": [1, 1], "label": [3, 4]})
    b = _site(tmp_path / "b.parquet", ["1"], "n", {"label.c": [0]})
    assert label_columns([a, b], ["label.*"]) == ["label.b", "label.a", "label.c"]
    assert label_columns([a, b], ["label.a", "label.*"]) == ["label.a", "label.b", "label.c"]
    with pytest.raises(DataError, match=r"label column 'label.x\*' \(eval.labels\) matches "
                                        r"none of the label columns of .*: \['label.b', "
                                        r"'label.a', 'label', 'label.c'\]; probe those with "
                                        r"--set 'eval.labels=\[\"label.b\", "):
        label_columns([a, b], ["label.x*"])
    with pytest.raises(DataError, match=r"did you mean 'label.a'\?$"):  # a name: the closest
        label_columns([a, b], ["label.aa"])


def test_labels_join_by_sample_id_unknown_is_minus_one_and_clashes_raise(tmp_path):
    a = _site(tmp_path / "a.parquet", ["s1", "s2", "s3"], "m", {"label.y": [1, 0, -1]})
    b = _site(tmp_path / "b.parquet", ["s3", "s4"], "n", {"label.y": [1, 0], "label.z": [1, 1]})
    got = read_labels([a, b], ["s4", "s3", "s1", "s9"], ["label.y", "label.z"])
    assert got["label.y"].tolist() == [0, 1, 1, -1]  # s3 known from b only
    assert got["label.z"].tolist() == [1, 1, -1, -1]
    c = _site(tmp_path / "c.parquet", ["s1"], "n", {"label.y": [0]})
    with pytest.raises(DataError, match=r"sample id 's1' has 'label.y' 0 here and 1 in "
                                        r"another site file \(1 samples disagree\)"):
        read_labels([a, c], ["s1"], ["label.y"])
