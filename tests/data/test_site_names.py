"""mmvm.data.site_names: what a site's folder in a split layout may be called."""

from __future__ import annotations

import pytest

from mmvm.data.site_names import site_name_problem


@pytest.mark.parametrize("name", ["site-a", "hospital_b", "rat1", "Site.2", "a b"])
def test_plain_names_are_fine(name):
    assert site_name_problem(name) is None


@pytest.mark.parametrize("name, said", [
    ("sites.json", "is the layout's index file (sites.json, written next to the site "
                   "folders); name the site otherwise"),
    ("Sites.JSON", "is the layout's index file"),  # one file on a case-blind disk
    (".split-abc", "starts with '.': a hidden name, as the split's own staging files "
                   "are (.split-*, .sites.json.*.tmp)"),
    (".sites.json.x.tmp", "starts with '.'"),
    ("", "is not a folder name"),
    ("..", "is not a folder name"),
    ("a/b", "holds a path separator; give a plain folder name"),
    ("a\\b", "holds a path separator"),
    ("a\nb", "holds a control character or leading/trailing space"),
    (" a", "holds a control character or leading/trailing space"),
    ("x" * 256, "is longer than 255 bytes"),
    (3, "is not a folder name"),
])
def test_reserved_and_unsafe_names_say_why(name, said):
    problem = site_name_problem(name)
    assert problem is not None and problem.startswith("site name ") and said in problem
