"""Reading metrics.csv (mmvm.metrics_csv): numbers, or an error naming file, line, column."""

import numpy as np
import pytest

from mmvm.metrics_csv import read_metrics

GOOD = "epoch,step,loss\n1,3,200.5\n\n2,6,190.25\n"


def test_columns_as_floats_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(GOOD)
    out = read_metrics(path)
    assert list(out) == ["epoch", "step", "loss"]
    np.testing.assert_array_equal(out["loss"], [200.5, 190.25])
    np.testing.assert_array_equal(out["epoch"], [1.0, 2.0])


@pytest.mark.parametrize("text, message", [
    (GOOD + "3,6\n", r"metrics.csv, line 5: 2 values for the header's 3 columns"),
    (GOOD + "3,9,200,7\n", r"line 5: 4 values for the header's 3 columns"),
    (GOOD + "3,9,abc\n", r"line 5, column 'loss': 'abc' is not a number"),
    ("epoch,step,loss\n", r"metrics.csv: no rows"),
    ("", r"metrics.csv: no rows"),
])
def test_a_damaged_file_names_the_line_and_column(tmp_path, text, message):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_metrics(path)


def test_a_binary_file_is_named_as_not_text(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"epoch,loss\n1,\xff\xfe\n")
    with pytest.raises(ValueError, match=r"metrics.csv: not a text \(UTF-8\) CSV file"):
        read_metrics(path)


def test_another_file_is_named_as_not_a_metrics_csv(tmp_path):
    """`mmvm plot curves run/eval.json` said "line 2: 2 values for the header's 1
    columns (a truncated or hand-edited row?)"."""
    path = tmp_path / "eval.json"
    path.write_text('{\n  "probe": {"mean": 0.5, "m0": 0.5}\n}\n')
    with pytest.raises(ValueError, match=r"eval.json: not a run's metrics.csv \(its first "
                                         r"line names no 'epoch' column: \{\); pass the"):
        read_metrics(path)
