"""``mmvm site check``: a site's node config, checked before its SuperNode starts.

Give it the string you will give ``flower-supernode --node-config`` (or the TOML file
you pass there), and the agreed experiment config to check that the site's data
trains it (a relative path is the app's file: this checkout's, or with --app DIR
that of a copy of the app you changed, as mmvm run --app runs it):

    mmvm site check --config configs/mimic_cxr_64.toml --node-config \\
      'site="site-a" data="/srv/mmvm/data/site-a" keys="/etc/mmvm/site-a"
       peers="site-b=5a0e...;site-c=0f1e..." state="/var/lib/mmvm/site-a"'

It reads what the site's ClientApp will read (policy, every row of the data files,
keys, the public key directory and the pinned peers' fingerprints, the state
folder), prints one line per finding and exits 1 if any is an error (2 when the
node config string or the experiment config cannot be read at all). With
--superlink HOST:PORT --root-certificates ca.crt (what the SuperNode will be given)
it also reaches the SuperLink and verifies its TLS certificate against that file.
Nothing is written and nothing is sent (beyond that TLS handshake). The node config keys and their defaults are in
deploy/README.md section 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmvm.cli import add_config_arguments
from mmvm.cli.run_config import APP_DIR, default_app

NODE_EXAMPLE = "e.g. 'site=\"site-a\" data=\"/srv/site-a\" keys=\"/etc/mmvm/site-a\"'"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "site", help="a site's keys and node config: make them (keys), check them "
        "before its SuperNode starts (check), make its streaming copy (prepare)",
        description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="check a node config (policy, data, keys, peers, "
                       "state) as the site's ClientApp reads it",
                       description=__doc__.replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--node-config", metavar="TEXT|FILE.toml",
                   help="what you give flower-supernode --node-config (without it, "
                   "--config alone prints the experiment's digest, what a node "
                   "config's experiment= pins)")
    add_config_arguments(c, None)
    c.add_argument("--app", metavar="DIR",
                   help="the Flower app the run will ship, whose configs/ the sites read "
                   f"(default: the current folder if it is a copy of this app, else "
                   f"{APP_DIR}); a relative --config is its file")
    c.add_argument("--superlink", metavar="HOST:PORT",
                   help="also reach the SuperLink as the SuperNode will (its --superlink)")
    c.add_argument("--root-certificates", metavar="CA.crt",
                   help="with --superlink: the CA file the SuperNode gets; the "
                   "SuperLink's certificate is verified against it")
    c.set_defaults(func=_check)
    r = sub.add_parser("prepare", help="make a streaming site's decoded copy of its "
                       "files before its first run (deploy/README.md section 3)",
                       description="Decode the site's train and test files into "
                       "<state>/decoded, where a site that streams them reads its rows "
                       "(its node config's streaming=true, or files over a quarter of "
                       "its memory); otherwise the first message of its first run does, "
                       "within the server's reply-timeout.")
    r.add_argument("--node-config", metavar="TEXT|FILE.toml", required=True,
                   help="what you give flower-supernode --node-config")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_prepare)
    from deploy.make_keys import parser as keys_options

    k = sub.add_parser("keys", parents=[keys_options(add_help=False)],
                       help="make keys: this site's (--site NAME), the operator's CA and "
                       "server certificate (--pki-only), the public key directory "
                       "(--directory), or all of a test bed's (--sites a,b,c)",
                       description=keys_options().description,
                       epilog="The same as python -m deploy.make_keys; deploy/README.md "
                       "section 1 has the procedure (each party makes its own secrets).")
    k.set_defaults(func=_keys)


def _prepare(args: argparse.Namespace) -> int:
    from mmvm.cli.run_config import parse_overrides
    from mmvm.cli.site_prepare import prepare

    return prepare(parse_overrides(args.node_config, "--node-config", NODE_EXAMPLE),
                   progress=not args.no_progress)


def _keys(args: argparse.Namespace) -> int:
    from deploy.make_keys import make

    return make(args)


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mmvm.cli.data_common import printable
    from mmvm.cli.run_config import parse_overrides
    from mmvm.cli.site_check import ERROR, OK, WARNING, check_node_config
    from mmvm.config import load_config

    if args.node_config is None:
        return _digest(args)
    nc = parse_overrides(args.node_config, "--node-config", NODE_EXAMPLE)
    # an --app given must be an app; the default is the current folder's copy of it or
    # this checkout, whatever it is
    # (an installed package without configs/ only skips the check of the config's place)
    app = checked_app(Path(args.app)) if args.app else default_app()
    cfg = load_config(app_config(app, args.config), args.overrides) if args.config \
        else None
    if args.overrides and cfg is None:
        raise ValueError("--set needs --config (the experiment the overrides change)")
    if args.root_certificates and not args.superlink:
        raise ValueError("--root-certificates needs --superlink (the SuperLink to verify)")
    check = check_node_config(nc, cfg, app)
    if check.count(ERROR) == 0:  # what no node config can say (a walkthrough asked)
        check.add("code", OK, "a node config binds only the code that reads it: start "
                  "the site's SuperExec with --allow-fab <sha256> of the reviewed app "
                  "bundle (--config alone prints it; deploy/README.md section 3, "
                  "\"Which code runs at the site\")")
    if args.superlink:
        from mmvm.cli.site_link import check_superlink

        check_superlink(check, args.superlink, args.root_certificates)
    site = printable(check.site)
    if sys.stdout.isatty():
        style = {OK: "green", WARNING: "yellow", ERROR: "red"}
        table = Table(title=Text(f"site {site}: node config"))
        for col in ("check", "status", "detail"):
            table.add_column(col, overflow="fold")
        for f in check.findings:
            table.add_row(f.item, Text(f.status, style=style[f.status]),
                          Text(printable(f.detail)))
        Console().print(table)
    else:  # a log or a pipe: one line per finding, whole
        for f in check.findings:
            print(f"{f.status:<8} {f.item:<11} {printable(f.detail)}")
    errors, warnings = check.count(ERROR), check.count(WARNING)
    verdict = (f"{errors} error(s): fix them before starting the SuperNode" if errors
               else "ready" + (" (untested against an experiment: add --config)"
                               * (cfg is None)))
    print(f"mmvm site check: {site}: {verdict}; {warnings} warning(s)",
          file=sys.stderr if errors else sys.stdout)
    return 1 if errors else 0


def _digest(args: argparse.Namespace) -> int:
    """``--config`` without ``--node-config``: the experiment's digest, to pin."""
    from mmvm.config import config_digest, load_config

    if not args.config:
        raise ValueError("give --node-config (the site's node config to check), or "
                         "--config alone for the experiment's digest")
    app = checked_app(Path(args.app)) if args.app else default_app()
    cfg = load_config(app_config(app, args.config), args.overrides)
    from deploy.fab_pin import fab_sha256

    bundle = fab_sha256(app)  # builds the whole bundle: once
    print(f"experiment {cfg.source}: digest {config_digest(cfg)}\n"
          f"pin it in each site's node config: experiment=\"{config_digest(cfg)}\" "
          f"(then check the node config with --node-config and the same --config"
          f"{' and --set' if args.overrides else ''})\n"
          f"and the code that reads it: the app bundle {app} ships hashes to "
          f"{bundle}; pin it at each site's SuperExec (python -m "
          f"deploy.superexec_fork ... --allow-fab {bundle}; deploy/README.md "
          f"section 3) if this is the reviewed release, a clean checkout")
    return 0


def checked_app(app: Path) -> Path:
    """``app`` if it is this app or a copy of it (``mmvm run --app`` takes the same):
    another folder's configs say nothing about what the sites will run."""
    from mmvm.cli.run_config import is_mmvm_app

    if not is_mmvm_app(app):
        raise FileNotFoundError(f"--app {app}: not a copy of this app (no pyproject.toml "
                                f"with its [tool.flwr.app.components] there); give the "
                                f"folder of the app the run will ship")
    return app


def app_config(app: Path, text: str) -> Path:
    """The experiment config file ``--config text`` names: a relative path is the
    app's file where it has one (what the site's ClientApp reads), else read from
    here (and then warned as not the app's); named as typed when both are one file."""
    from mmvm.config import ConfigError

    path = Path(text).expanduser()
    inside = app / path
    if not (path.is_absolute() or path.is_file() or inside.is_file()):
        raise ConfigError(f"--config {text}: no such file in the app {app} (--app) nor "
                          f"here ({Path.cwd()})")
    if path.is_absolute() or not inside.is_file() or path.resolve() == inside.resolve():
        return path
    return inside
