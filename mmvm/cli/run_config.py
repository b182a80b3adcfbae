"""The run config ``mmvm run`` hands to ``flwr run``, checked before Flower starts.

Flower answers an unknown key with ``Invalid run configuration`` alone, and a value
the app refuses only after Ray and the simulation engine are up (20-25 s), naming
the staged copy of the config file. This reads the overrides as ``flwr run`` does
(``key=value`` pairs of TOML values, or one ``.toml`` file), names an unknown key
with the nearest known one, and loads the settings as the ServerApp will, so that a
typo fails at once and names what the user typed.
"""

from __future__ import annotations

import difflib
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmvm.config import ConfigError

APP_DIR = Path(__file__).resolve().parents[2]  # this checkout: the app mmvm ships

# flwr.common.config.parse_config_args: key=value, the value quoted or one word
PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
EXAMPLE = "e.g. \"exchange='step' num-sites=3 set='train.epochs=2'\""


def is_mmvm_app(app: Path) -> bool:
    """Whether ``app`` is this app or a copy of it (the same ServerApp and ClientApp
    components): its run config is then checked before Flower starts."""
    def components(folder: Path) -> dict | None:
        try:
            with open(folder / "pyproject.toml", "rb") as fh:
                return tomllib.load(fh)["tool"]["flwr"]["app"]["components"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return None

    return components(app) is not None and components(app) == components(APP_DIR)


def default_app() -> Path:
    """The app ``mmvm run`` and ``mmvm site check`` take without ``--app``: the
    current folder where it is a copy of this app (as ``flwr run .`` takes it: a
    hospital's own copy with its configs), else the checkout mmvm runs from."""
    here = Path.cwd()
    return here if here.resolve() != APP_DIR.resolve() and is_mmvm_app(here) else APP_DIR


def app_defaults(app: Path) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app at ``app`` (ConfigError naming the file
    when it is not TOML or has no such table: not a Flower app)."""
    path = app / "pyproject.toml"
    try:
        with open(path, "rb") as fh:
            return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has no [tool.flwr.app.config] table: --app {app} is not "
                          "a Flower app (mmvm run runs this app or a copy of it)") from None


def parse_overrides(text: str, flag: str = "--run-config", example: str = EXAMPLE,
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``--run-config`` as ``flwr run`` reads it (and ``--node-config`` as
    ``flower-supernode`` does: the same parser), except that a word that is not
    ``key=value``, which Flower drops silently, is an error. ``defaults``: the app's
    values, whose types name what a value that does not parse should be."""
    text = text.strip()
    if not text:
        return {}
    if text.endswith(".toml"):  # as flwr: a value ending so is a file, whatever else
        try:
            with open(Path(text).expanduser(), "rb") as fh:
                return _flat(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{flag} {text}: {err}") from None
    pairs = PAIR.findall(text)
    stray = PAIR.sub("", text).split()
    if stray:
        spaced = re.search(r"[\w.-]+\s+=|=\s+\S", text)
        raise ConfigError(f"{flag}: {stray[0]!r} is not key=value"
                          + "; write key=value without spaces around '='" * bool(spaced)
                          + f" ({example})")
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # Flower keeps one of them; which one is the user's is not ours to guess
        raise ConfigError(f"{flag}: {twice[0]} is given {keys.count(twice[0])} times; "
                          f"give each key once")
    try:  # flattened as flwr does: a.b=1 is the key "a.b"
        return _flat(tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs)))
    except tomllib.TOMLDecodeError as err:
        bad = _bad_pair(pairs, defaults or {})  # one that names its key's type has its
        raise ConfigError(f"{flag}: {bad or err}" + (  # own example
            "" if " takes " in bad else f" ({example})")) from None


KINDS = {bool: "true or false", int: "a whole number", float: "a number",
         str: "a string in quotes"}


def _bad_pair(pairs: list[tuple[str, str]], defaults: Mapping[str, Any]) -> str:
    """The first ``key=value`` of ``pairs`` that TOML cannot read, named by its words
    (TOML's own message gives a line and column of a text the user never wrote), and
    what its key takes where ``defaults`` has it."""
    for k, v in pairs:
        if not _toml_error(f"{k} = {v}"):
            continue
        if not _toml_error(f"x = {v}"):
            return f"{k}={v}: {k!r} is not a key (letters, digits, - _ and .)"
        kind = KINDS.get(type(defaults.get(k)))
        if kind is None:
            return f"{k}={v}: {v} is not a value; strings take quotes"
        default = defaults[k]
        shown = f"'{default}'" if isinstance(default, str) else str(default).lower()
        return f"{k}={v}: {k} takes {kind}, e.g. {k}={shown} (the app's default)"
    return ""


def _toml_error(line: str) -> bool:
    try:
        tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return True
    return False


def _flat(doc: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_run_config(app: Path, text: str, local: bool, deployment: bool = False
                     ) -> dict[str, Any]:
    """The run config of a run of ``app`` with overrides ``text``: its keys checked;
    where ``local`` (the server runs on this machine, a local simulation) its values
    as the ServerApp will check them, with the eval-data folder; elsewhere the values
    that need none of the server's files."""
    from mmvm.cli.run_values import check_local_values, check_remote_values

    defaults = app_defaults(app)
    overrides = parse_overrides(text, defaults=defaults)
    unknown = [key for key in overrides if key not in defaults]
    if unknown:  # every one at once: a second typo should not cost a second try
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(defaults), n=1)
            named.append(f"{key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        what = "unknown key " if len(named) == 1 else f"{len(named)} unknown keys: "
        raise ConfigError(f"--run-config: {what}{' | '.join(named)} (the keys are those "
                          f"of [tool.flwr.app.config] in {app / 'pyproject.toml'})")
    rc = {**defaults, **overrides}
    if local:
        check_local_values(app, rc, overrides)
    else:  # the ServerApp reads its paths on its own machine
        check_remote_values(app, rc, deployment)
    return rc


def with_site_count(text: str, defaults: Mapping[str, Any] | None = None,
                    app: Path | None = None) -> str:
    """``--run-config`` with ``num-sites`` set where none is given: to the number of
    ``site-dirs`` where it lists folders (the app's default, 3, was refused for two
    folders), else, with the ``app`` whose config it reads, to the sites of the
    default data's layout where they differ from the app's (5 for the hippocampus
    config); said on stderr. Else as given."""
    given = parse_overrides(text, defaults=defaults)
    if "num-sites" in given or text.strip().endswith(".toml"):
        return text
    if given.get("site-dirs"):
        from mmvm.federation.site_dirs import parse_site_dirs

        n, why = len(parse_site_dirs(str(given["site-dirs"]))), "the site-dirs' count"
    elif app is not None and defaults:
        n = layout_sites(app, {**defaults, **given})
        if n is None or n == defaults.get("num-sites"):
            return text
        why = "the sites of its layout"
    else:
        return text
    print(f"mmvm run: num-sites={n}, {why}", file=sys.stderr)
    return f"{text} num-sites={n}"


def layout_sites(app: Path, rc: Mapping[str, Any]) -> int | None:
    """How many sites a simulation of run config ``rc`` makes from its config's
    default data; None where this machine cannot tell (a config file elsewhere, data
    the simulation does not make): the checks that follow say why, if anything."""
    from mmvm.cli.run_values import app_config, simulated_sites
    from mmvm.federation.settings import load_settings

    try:
        return simulated_sites(load_settings({**rc, "config": str(app_config(app, rc))}))
    except ValueError:  # ConfigError too: said by the checks, with their context
        return None


def num_sites(app: Path, overrides: str) -> int:
    """``num-sites`` of the run: the override if given, else the app's default."""
    config = {**app_defaults(app), **parse_overrides(overrides)}
    if "num-sites" not in config:
        raise ConfigError(f"{app / 'pyproject.toml'}: the app's run config has no "
                          "num-sites, which says how many SuperNodes to simulate: is --app "
                          f"{app} the mmvm app or a copy of it?")
    return int(config["num-sites"])
