"""One ``--help`` layout for the project's commands and benchmark scripts."""

from __future__ import annotations

import argparse


class DefaultsHelp(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's own line breaks (its tables and commands) and ends
    each option's help with its default, unless the help already names it: a user
    should not have to read a script to learn what a run without options does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or default in (None, False, "", argparse.SUPPRESS) \
                or default == [] or "default" in text.lower():
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {default})"
