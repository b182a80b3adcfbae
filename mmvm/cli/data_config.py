"""``mmvm data config``: a whole config for prepared site folders
(:mod:`mmvm.data.site_config`), checked as ``mmvm train`` loads it, written atomically."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mmvm.cli.data_common import handles


def add_config(sub: argparse._SubParsersAction) -> None:
    """Add ``mmvm data config``."""
    c = sub.add_parser(
        "config", help="write a whole config for prepared site folders",
        description="Draft a config for training on site folders joined by sample id: "
                    "each modality's kind, shape and a network that takes it from the "
                    "files; training and evaluation settings from the shipped config "
                    "for such data (images by size: configs/mimic_cxr_64.toml, "
                    "mimic_cxr.toml, polymnist_cpu.toml; vectors only: "
                    "hippocampus.toml; mixed: the images'), or --base; a batch size and "
                    "judge epochs set for a small table. Put it under the app's "
                    "configs/ folder: a deployed site reads only the app's own configs.")
    c.add_argument("folders", nargs="+", metavar="SITE_DIR",
                   help="prepared site folders (each with train.parquet and test.parquet)")
    c.add_argument("--out", required=True, help="the config to write (.toml)")
    c.add_argument("--base", help="the config to take [train] and [eval] from "
                                  "(default: the shipped one for the data)")
    c.add_argument("--force", action="store_true", help="write over an existing --out")
    handles(c, run_config)


def one_line_arrays(text: str, width: int = 88) -> str:
    """tomli_w writes every array one item a line; those that fit on one line (a
    shape, two folder names) are written there, as a person would."""
    def join(match: re.Match) -> str:
        items = [v.strip().rstrip(",") for v in match.group(2).splitlines()]
        line = f"{match.group(1)}[{', '.join(items)}]"
        return line if len(line) <= width else match.group(0)

    return re.sub(r"(?m)^(\S.* = )\[\n((?:    [^\[\]\n]*,\n)+)\]", join, text)


def run_config(args: argparse.Namespace) -> int:
    import tomli_w

    from mmvm.atomic import atomic_write
    from mmvm.config import config_from_dict
    from mmvm.data.site_config import draft_config

    out = Path(args.out)
    if out.suffix != ".toml":
        raise ValueError(f"--out {out}: a config is a .toml file")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; --force writes over it")
    draft = draft_config(args.folders, args.base, out.stem)
    config_from_dict(draft.raw, source=str(out))  # what mmvm train will say, said now
    header = [f"# drafted by `mmvm data config` from {', '.join(args.folders)}",
              f"# [model] (but its modalities), [train] and [eval]: {draft.base}'s "
              f"(tune them); the modalities: the files'", *(f"# {n}" for n in draft.notes), ""]
    text = one_line_arrays(tomli_w.dumps(draft.raw))
    atomic_write(out, ("\n".join(header) + "\n" + text).encode())
    print(f"wrote {out} (settings from {draft.base})")
    for note in draft.notes:  # warnings where the other commands put theirs
        if note.startswith("warning: "):
            print(note, file=sys.stderr)
        else:
            print(f"note: {note}")
    dirs = ",".join(str(Path(f).resolve()) for f in args.folders)
    print(f"train centrally:  mmvm train --config {out}\n"
          f"federated rehearsal:  mmvm run --run-config \"config='{out.resolve()}' "
          f"num-sites={len(args.folders)} site-dirs='{dirs}'\"\n"
          f"deployment:  copy it into the app's configs/ and name it config='configs/"
          f"{out.name}' (deployed sites read only the app's files)")
    return 0
