"""What a site of a split layout may be named: its folder under the layout's root.

``mmvm data split`` writes ``<out>/<site>/<split>.parquet`` and the index
``<out>/sites.json``, staging its files in hidden ``.split-*`` folders and temporary
``.sites.json.*.tmp`` files first. A site named ``sites.json`` made a folder where the
index goes (the split failed after every site file was in place), one named
``.split-x`` could be taken for a staging folder, and a name with a separator or a
control character is no folder of ``<out>`` at all: each is refused before anything is
written.
"""

from __future__ import annotations

SITES_JSON = "sites.json"  # the index mmvm.data.sites.split_sites writes
MAX_NAME_BYTES = 255  # a file name on the usual file systems


def site_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a site's folder in a layout, or None."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        return f"site name {name!r} is not a folder name"
    if "/" in name or "\\" in name:
        return f"site name {name!r} holds a path separator; give a plain folder name"
    if not name.isprintable() or name != name.strip():
        return (f"site name {name!r} holds a control character or leading/trailing "
                f"space; give a plain folder name")
    if name.startswith("."):
        return (f"site name {name!r} starts with '.': a hidden name, as the split's own "
                f"staging files are (.split-*, .{SITES_JSON}.*.tmp)")
    if name.casefold() == SITES_JSON:
        return (f"site name {name!r} is the layout's index file ({SITES_JSON}, written "
                f"next to the site folders); name the site otherwise")
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"site name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes"
    return None
