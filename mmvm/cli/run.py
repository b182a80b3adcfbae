"""``mmvm run``: run the federated app with ``flwr run`` and exit with the run's status.

``flwr run --stream`` exits 0 even when the run failed, and an interrupted CLI leaves
the run going in the SuperLink. This command runs the app as ``flwr run`` would,
streams its output, then asks the SuperLink for the run's final status (``flwr ls``)
and exits 0 only if it completed. Ctrl-C, SIGTERM, SIGHUP or a reader that goes
(``| head``) stop the run: where its folder is here the ServerApp first ends at a
window everyone checkpoints (the one it is in if that is a checkpoint window, else the
next; ``stop.request``), then ``flwr stop``. Without ``--connection`` it is a local
simulation, never flwr's default connection where that is a SuperLink; it starts
exactly ``num-sites`` SuperNodes (the run config's value, the ``--run-config`` one,
or the number of ``site-dirs``), so the two can never disagree. Flower packages a
staged copy of the app (``mmvm.cli.app_stage``: the same FAB, without the project's
``.venv``, refused if it would carry a site's private keys). It spawns the ``flwr``
CLI; of Flower it imports only the rules of what a FAB holds. The run config is
checked first (``mmvm.cli.run_config``): a typo fails at once."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from mmvm.cli.app_stage import staged_app
from mmvm.cli.local_link import check_local_superlink, stop_local_superlink
from mmvm.cli.run_checks import check_ray_address, check_resources, cluster_address
from mmvm.cli.run_config import (
    APP_DIR,
    app_defaults,
    check_run_config,
    default_app,
    is_mmvm_app,
    num_sites,
    parse_overrides,
    with_site_count,
)
from mmvm.cli.run_hints import after_run
from mmvm.cli.run_stop import (
    ASKED,
    EARLY,
    STOP_SIGNALS,
    first_run,
    kept_state,
    request_stop,
    run_folders,
    stopping_now,
    wait_for_stop,
)
from mmvm.cli.run_stream import Console, RunStream, follow_run
from mmvm.config import ConfigError

QUIET_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
             "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
             "RAY_USAGE_STATS_ENABLED": "0",
             # each site's line as it comes: Ray's dedup held "[repeated 2x across
             # cluster]" lines back for seconds, past the run's closing summary
             "RAY_DEDUP_LOGS": "0",
             # Ray's FutureWarning about accelerator env vars (no GPU is requested)
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


HELP = """\
mmvm run: run the federated app as `flwr run` does, show its progress, and exit with
the run's status (0 only if it completed; `flwr run` exits 0 for a failed run too).

Without --connection it is a local simulation with num-sites simulated sites; with
--connection it runs on that SuperLink (--deployment: sites' own SuperNodes). The run
config is checked before Flower starts: a typo fails at once, naming the key.
Ctrl-C (or SIGTERM) stops the run: where its folder is on this machine after a window
every site checkpoints (continue it with --run-config "resume='<run id>'"), else at
once. A second Ctrl-C stops it at once."""

EXAMPLES = """\
examples:
  mmvm run                                               # the default simulation
  mmvm run --run-config "set='train.epochs=2' n-train=300 n-test=100"   # a smoke test
  mmvm run --run-config "config='configs/hippocampus.toml'"   # 5 rats = 5 sites
  mmvm run --run-config "exchange='step'"               # exact: the centralized steps
  mmvm run --connection mmvm --deployment                # deploy/README.md
  mmvm run --stop-superlink                              # the local SuperLink, idle

Run-config keys: README.md "Run configuration"; results: <out-dir>/run-<id>/."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the federated app (flwr run) and exit with the run's status",
        description=HELP, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--app", default=None, help=f"the Flower app (default: the current "
                   f"folder if it is a copy of this app, else {APP_DIR})")
    p.add_argument("--connection", default=None,
                   help="a SuperLink connection of $FLWR_HOME/config.toml (default: a "
                        "local simulation: flwr's default if it is one, else a "
                        "connection whose address is ':local:')")
    p.add_argument("--run-config", action="append", default=[],
                   help="run-config overrides as flwr takes them, e.g. "
                        "\"set='train.epochs=2' exchange='step'\"; may be given more "
                        "than once (each key once)")
    p.add_argument("--deployment", action="store_true",
                   help="the connection is a deployment (SuperNodes started by the "
                        "sites): no simulated SuperNodes are configured")
    p.add_argument("--cpus-per-site", type=int, default=1,
                   help="simulation: CPU cores Ray reserves per message a site answers "
                        "(default 1; whole cores: Flower takes integers)")
    p.add_argument("--gpus-per-site", type=float, default=0.0,
                   help="simulation: GPU share per simulated site (default 0)")
    p.add_argument("--stop-superlink", action="store_true",
                   help="stop the local SuperLink that flwr run keeps in the background "
                        "for the next simulation (this FLWR_HOME's; refused while it "
                        "runs one) and exit; no run is started")
    p.set_defaults(func=run)


def flwr_command(args: argparse.Namespace, app: Path | None = None) -> list[str]:
    """``flwr run`` of the app ``app`` (default ``args.app``) as ``args`` asks."""
    flwr = Path(sys.executable).with_name("flwr")
    cmd = [str(flwr if flwr.exists() else "flwr"), "run", str(app or args.app)]
    cmd += [args.connection] if args.connection else []
    cmd += ["--stream"]
    if args.run_config:
        cmd += ["--run-config", args.run_config]
    if not args.deployment:
        n = num_sites(Path(args.app), args.run_config)
        resources = f"client-resources-num-cpus={args.cpus_per_site}"
        if args.gpus_per_site:
            resources += f" client-resources-num-gpus={args.gpus_per_site:g}"
        if not os.environ.get("RAY_ADDRESS", "").strip():  # a cluster brings its own CPUs
            # every site's message in flight at once: the Flower actors only forward
            # to the sites' hosts (client/hosts.py), which do the work
            cores = max(os.cpu_count() or 1, n * args.cpus_per_site)
            resources += f" init-args-num-cpus={cores}"
        cmd += ["--federation-config", f"num-supernodes={n} {resources}"]
    return cmd


def _env() -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV}
    if "RAY_DEDUP_LOGS" in os.environ:  # the user's choice (many sites: dedup) wins
        env["RAY_DEDUP_LOGS"] = os.environ["RAY_DEDUP_LOGS"]
    bin_dir = str(Path(sys.executable).parent)  # the SuperLink spawns flwr tools from PATH
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _flwr(cmd: list[str], args: argparse.Namespace, *extra: str) -> list[str]:
    return [cmd[0], *extra, *([args.connection] if args.connection else [])]


def status(cmd: list[str], args: argparse.Namespace, run_id: str) -> str:
    """The run's status as the SuperLink reports it (e.g. ``finished:completed``)."""
    try:
        res = subprocess.run(_flwr(cmd, args, "ls", "--run-id", run_id, "--format",
                                   "json"), env=_env(), capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return "unknown (flwr ls did not answer within 120 s)"
    try:
        doc = json.loads(res.stdout[res.stdout.index("{"):])
        return str(doc["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return f"unknown ({(res.stdout + res.stderr).strip()[-300:]})"


def local_connection() -> str | None:
    """The connection of a local simulation: None where flwr's default is one (or
    there is no config yet: flwr then makes one whose default is), else the name of
    one whose address is ``:local:``. A default that is a SuperLink is not taken:
    without --connection this command runs a simulation, not a real federation."""
    home, links = _connections()
    if links is None:
        return None
    default = links.get("default", "")
    local = [k for k, v in links.items() if isinstance(v, dict) and _is_local(v)]
    if default in local or not local and default == "":
        return None
    if local:
        return local[0]
    if not isinstance(links.get(default), dict):
        raise ConfigError(f"flwr's default connection {default!r} is not defined in "
                          f"{home / 'config.toml'}; add [superlink.local] with "
                          f"address = \":local:\" for a simulation")
    where = links[default].get("address", "?")
    raise ConfigError(
        f"flwr's default connection {default!r} ({home / 'config.toml'}) is the SuperLink "
        f"at {where}, not a local simulation: to run there, say so (--connection "
        f"{default}, and --deployment if its SuperNodes are real sites rather than a "
        f"simulation SuperLink's); for a local simulation add [superlink.local] with "
        f"address = \":local:\"")


def _connections() -> tuple[Path, dict | None]:
    """flwr's home and the ``[superlink]`` table of its config.toml (None: no file)."""
    home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    try:
        with open(home / "config.toml", "rb") as fh:
            return home, tomllib.load(fh).get("superlink", {})
    except FileNotFoundError:
        return home, None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{home / 'config.toml'}: {err}") from None


def named_is_simulation(name: str, deployment: bool) -> bool:
    """Whether ``--connection name`` runs a local simulation (its address is
    ``:local:``): then the run config gets a simulation's checks and SuperNodes, as
    without ``--connection``. A name that is not defined is flwr's to report, unless
    ``--deployment`` contradicts a local one."""
    home, links = _connections()
    link = (links or {}).get(name)
    local = isinstance(link, dict) and _is_local(link)
    if local and deployment:
        raise ConfigError(f"--connection {name} is a local simulation ({home / 'config.toml'}"
                          f"), not a deployment: drop --deployment, or name the "
                          f"SuperLink's connection")
    return local


def _is_local(link: dict) -> bool:
    """A connection flwr 1.41 runs as a local simulation (``flwr/cli/constant.py``;
    one with options and no address is its older form)."""
    return link.get("address") in (":local:", ":local-in-memory:") \
        or "address" not in link and "options" in link


def _no_federations(app: Path) -> None:
    """``flwr run`` moves an app's ``[tool.flwr.federations]`` into its config.toml and
    makes their default flwr's, which could turn a simulation into a run on a SuperLink
    after :func:`local_connection` looked: such an app is refused here."""
    try:
        with open(app / "pyproject.toml", "rb") as fh:
            feds = tomllib.load(fh).get("tool", {}).get("flwr", {}).get("federations")
    except (OSError, tomllib.TOMLDecodeError):
        return  # flwr says what is wrong with it
    if feds:
        raise ConfigError(f"{app / 'pyproject.toml'} has a [tool.flwr.federations] "
                          f"section, which flwr run would make its default connection: "
                          f"move it to $FLWR_HOME/config.toml and name it with "
                          f"--connection")


def run(args: argparse.Namespace) -> int:
    args.app = args.app or str(default_app())
    try:
        if args.stop_superlink:
            print(stop_local_superlink(_env()), file=sys.stderr)
            return 0
        args.run_config = one_run_config(args.run_config)
        simulation = not (args.connection or args.deployment)
        if simulation:
            _no_federations(Path(args.app))
            args.connection = local_connection()
        elif args.connection:  # a named local simulation is checked as one
            simulation = named_is_simulation(args.connection, args.deployment)
        # the local SuperLink's Ray (this machine's, or RAY_ADDRESS's), or the cluster
        # a simulation SuperLink's RAY_ADDRESS names (deploy/README.md section 6; not
        # this machine's GPUs then: the SuperLink's are elsewhere)
        if simulation or not args.deployment and cluster_address():
            check_ray_address()
            check_resources(args)
        if is_mmvm_app(Path(args.app)):  # this app or a copy: its checks apply
            if not args.deployment:  # simulated SuperNodes: one per site folder
                args.run_config = with_site_count(
                    args.run_config, app_defaults(Path(args.app)), Path(args.app))
            check_run_config(Path(args.app), args.run_config, local=simulation,
                             deployment=args.deployment)
        else:
            parse_overrides(args.run_config)
        restarted = simulation and check_local_superlink(_env())
        if restarted:  # it kept an environment other than this run's
            print(restarted, file=sys.stderr)
        with staged_app(Path(args.app)) as app:
            return _run(args, flwr_command(args, app))
    except (FileNotFoundError, ConfigError) as err:
        print(f"mmvm run: {err}", file=sys.stderr)
        return 2


def one_run_config(given: str | list[str]) -> str:
    """``--run-config`` given once or more, as one string of ``key=value`` pairs (a
    ``.toml`` file only alone: a later flag would silently replace it)."""
    if isinstance(given, str):
        return given
    if len(given) > 1 and any(g.strip().endswith(".toml") for g in given):
        raise ConfigError(f"--run-config {' '.join(given)}: a .toml run config is given "
                          f"alone; write its keys as key=value pairs to add more")
    return " ".join(given)


def _run(args: argparse.Namespace, cmd: list[str]) -> int:
    """``flwr run`` streamed to the end, followed again (``flwr log``) where its stream
    ends while the run goes on. The first stop signal asks the ServerApp to stop after
    its window (:mod:`mmvm.cli.run_stop`) and streaming goes on; a second one, or a
    first where there is no window to wait for, asks flwr to end (SIGINT; killed 15 s
    later if it has not): reading goes on to the end of its output, so no line that
    names the run is lost, then the run is stopped with ``flwr stop`` while further
    signals are ignored."""
    console = Console(cmd, _env())
    signals: list[int] = []
    asked: list[str] = []  # what the first signal's request did (run_stop.ASKED, EARLY)

    def on_signal(signum, frame):
        signals.append(signum)
        if len(signals) == 1 and out.run_id:
            asked.append(request_stop(*run_folders(parse_overrides(args.run_config),
                                                   out.run_id), out.run_id))
            if asked[0] == ASKED:
                return
        if len(signals) == 2:  # said at once: the stop itself may take seconds
            stopping_now(out.run_id or "")
        console.interrupt()

    out = RunStream()
    before = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        final = follow_run(console, out, signals, lambda: on_signal(signal.SIGPIPE, None),
                           lambda run_id: status(cmd, args, run_id),
                           lambda run_id: _flwr(cmd, args, "log", run_id, "--stream"))
        for sig in STOP_SIGNALS:  # from here on: the stop and the status query finish
            signal.signal(sig, signal.SIG_IGN)
        if signals:
            return _stop(cmd, args, out.run_id, signals[0], asked[0] if asked else None,
                         now=len(signals) > 1)
        return _final(cmd, args, out.run_id, console.procs[0].returncode, out.failed,
                      final)
    finally:
        console.kill.cancel()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stop(cmd: list[str], args: argparse.Namespace, run_id: str | None, signum: int,
          asked: str | None = None, now: bool = False) -> int:
    """Stop the run once ``flwr run`` ended. ``asked``: what the first signal's
    request did (else it is asked now, where it can be); ``now``: a second came."""
    from mmvm.federation.server_state import STATE_FILE
    from mmvm.federation.stop_request import StopRequest

    if not run_id:
        return 128 + signum
    overrides = parse_overrides(args.run_config)
    first, (state, results) = first_run(overrides, run_id), run_folders(overrides, run_id)
    if asked not in (ASKED, EARLY) and not now:  # not asked at the signal: the run id
        asked = request_stop(state, results, run_id)  # or its folder was not there yet
    if asked in (ASKED, EARLY):  # flwr stop alone left a simulation's ServerApp
        # training, or attaching: what is left to resume is known once it answered
        wait_for_stop(state, run_id, now, lambda: status(cmd, args, run_id) == "running",
                      early=asked == EARLY)
    subprocess.run(_flwr(cmd, args, "stop", run_id), env=_env(),
                   capture_output=True, timeout=120)
    if (results / "results.json").is_file():  # trained and written
        if status(cmd, args, run_id) == "finished:completed":
            print(f"\nmmvm run: run {run_id} completed before the stop took effect "
                  f"(its last window or its evaluation was under way); its results are "
                  f"in {results} (its summary: flwr log {run_id} {args.connection or ''} "
                  f"--show)".replace("  ", " "), file=sys.stderr)
            return 0
        print(f"\nmmvm run: stopped run {run_id} after its training was written "
              f"({results}); its sites answered the final evaluation, so it cannot be "
              f"resumed: evaluate its model with mmvm evaluate --run {results}",
              file=sys.stderr)
    elif state.is_dir() and not (state / STATE_FILE).is_file():  # by now: an early
        # request may have been read only after the sites attached and state was written
        pending = StopRequest(state, run_id).asked()  # its ServerApp has not answered
        print(f"\nmmvm run: stopped run {run_id} before its sites attached (no "
              f"checkpoint in {state}): nothing to resume; start it again"
              + (f" (its ServerApp has not answered yet: should it write {STATE_FILE} "
                 f"there, it stopped after attaching, resumable with resume="
                 f"'{first}')" if pending else ""), file=sys.stderr)
    else:
        print(f"\nmmvm run: stopped run {run_id}; continue it with the same "
              f"--run-config and resume='{first}' ({kept_state(state)})",
              file=sys.stderr)
    return 128 + signum


def _final(cmd: list[str], args: argparse.Namespace, run_id: str | None, code: int,
           said: bool = False, final: str | None = None) -> int:
    """The run's status (``final``, where it was asked already) said, with a hint
    where it did not complete; exit status 0 only for a completed run."""
    if run_id is None:
        print(f"mmvm run: flwr run did not start a run (exit code {code})",
              file=sys.stderr)
        return 1
    final = final or status(cmd, args, run_id)
    ok = final == "finished:completed"
    print(f"mmvm run: run {run_id} {final}", file=sys.stdout if ok else sys.stderr)
    hint = after_run(final, code, said, run_id,
                     first_run(parse_overrides(args.run_config), run_id), args.connection)
    if hint:
        print(hint, file=sys.stderr)
    return 0 if ok else 1
