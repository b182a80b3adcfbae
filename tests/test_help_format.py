"""Every benchmark's --help names what a run without options does."""

from __future__ import annotations

import argparse

from mmvm.help_format import DefaultsHelp


def _help(*args, **kwargs) -> str:
    p = argparse.ArgumentParser(description="line one\n    kept as written",
                                formatter_class=DefaultsHelp)
    p.add_argument(*args, **kwargs)
    return p.format_help()


def test_a_default_is_appended_and_the_description_keeps_its_layout():
    text = _help("--epochs", type=int, default=20, help="training epochs")
    assert "training epochs (default: 20)" in text
    assert "line one\n    kept as written" in text


def test_lists_read_as_the_command_line_would_take_them():
    assert "(default: 0 1 2)" in _help("--seeds", nargs="+", type=int, default=[0, 1, 2],
                                        help="seeds")


def test_no_default_is_invented_and_none_is_repeated():
    for kwargs in ({"default": None}, {"default": ""}, {"action": "store_true"},
                   {"action": "append", "default": []}):
        assert "(default" not in _help("--x", help="what x is", **kwargs)
    said = _help("--x", default=3, help="x (default: three)")
    assert said.count("default") == 1
