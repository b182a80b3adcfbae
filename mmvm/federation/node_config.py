"""A deployment site's node config read into its :class:`SitePolicy`.

Every key's reader, every problem of a node config at once (what ``mmvm site check``
lists before the SuperNode starts) and the paths it names that are missing. The keys
and what each protects are in :mod:`mmvm.federation.policy`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from mmvm.federation.booleans import as_bool
from mmvm.federation.policy import KEYS, LIMITS, PolicyError, SitePolicy
from mmvm.secure.keys import validate_site_name
from mmvm.secure.pins import fingerprint_digits


def _bool(nc: Mapping, key: str, default: bool) -> bool:
    if key not in nc:
        return default
    v = nc[key]
    if (flag := as_bool(v)) is not None:
        return flag
    raise PolicyError(f"node config: {key} = {v!r} is not a boolean (true or false; "
                      f"yes/no, on/off, 1/0 also do)")


def _positive(nc: Mapping, key: str, default: int) -> int:
    v = nc.get(key, default)
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        n = 0
    if isinstance(v, bool) or isinstance(v, float) and v != n or n < 1:
        unit = " (whole GiB)" * key.endswith("-gib")
        raise PolicyError(f"node config: {key} = {v!r} is not a positive integer{unit}")
    return n


def _peers(text: str) -> dict[str, str] | None:
    if text.strip() == "*":
        return None
    out = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, fp = item.partition("=")
        if not sep or not name.strip() or len(fingerprint_digits(fp)) != 32:
            raise PolicyError(f"node config: peers entry {item!r} is not "
                              f"'name=fingerprint' (32 hex digits)")
        if name.strip() in out:  # which of the two is the site's is not ours to guess
            raise PolicyError(f"node config: peers pins {name.strip()!r} twice; keep the "
                              f"fingerprint its administrator confirmed")
        out[name.strip()] = fp.strip()
    if not out:
        raise PolicyError("node config: peers is empty; list the expected peers or "
                          "say peers=\"*\"")
    return out


def _holders(text: str) -> dict[str, frozenset[str]]:
    """``"m=a,b,c;m2=d,e"`` -> ``{m: {a, b, c}, m2: {d, e}}``."""
    out: dict[str, frozenset[str]] = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        m, sep, names = item.partition("=")
        sites = frozenset(filter(None, (s.strip() for s in names.split(","))))
        if not sep or not m.strip() or not sites or m.strip() in out:
            raise PolicyError(f"node config: holders entry {item!r} is not "
                              f"'modality=site,site,...' (one entry per modality; this "
                              f"site alone: never in a masking group)")
        try:
            for name in sites:
                validate_site_name(name)
        except ValueError as err:
            raise PolicyError(f"node config: holders: {err}") from None
        out[m.strip()] = sites
    if not out:
        raise PolicyError("node config: holders is empty; leave it out, or list "
                          "'modality=site,site,...' per modality")
    return out


def _digests(text: str) -> tuple[str, ...]:
    """``"<64 hex>,<64 hex>"`` -> the experiment digests a site may run."""
    out = tuple(filter(None, (s.strip().lower() for s in text.split(","))))
    bad = [d for d in out if not re.fullmatch(r"[0-9a-f]{64}", d)]
    if bad or not out:
        raise PolicyError(f"node config: experiment entries {bad or [text]} are not "
                          f"experiment digests (64 hex digits each, comma-separated, as "
                          f"`mmvm site check --config FILE` prints them)")
    return out


def _labels(text: str) -> tuple[str, ...]:
    out = tuple(filter(None, (s.strip() for s in text.split(","))))
    odd = [p for p in out if p != "*" and not p.startswith("label")]
    if odd:
        raise PolicyError(f"node config: eval-labels entries {odd} are not label columns "
                          f"('label' or 'label.<name>'; patterns such as 'label.*', or "
                          f"'*' for any)")
    return out


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text.strip()):
        raise PolicyError(f"node config: device = {text!r} is not a device (cpu, cuda, "
                          f"cuda:N, mps or auto)")
    return text.strip()


# each policy key's reader (its value -> the SitePolicy field), the defaults aside
_READERS = {"require-secure": lambda nc, k: _bool(nc, k, False),
            "allow-collect": lambda nc, k: _bool(nc, k, True),
            "allow-pair-masking": lambda nc, k: _bool(nc, k, False),
            "require-psi": lambda nc, k: _bool(nc, k, False),
            "min-rows": lambda nc, k: _positive(nc, k, 1),
            **{key: lambda nc, k: _positive(nc, k, LIMITS[k]) for key in LIMITS},
            "peers": lambda nc, k: _peers(str(nc[k])),
            "eval-labels": lambda nc, k: _labels(str(nc[k])),
            "device": lambda nc, k: _device(str(nc[k])),
            "streaming": lambda nc, k: _bool(nc, k, False),
            "allow-compile": lambda nc, k: _bool(nc, k, False),
            "report-losses": lambda nc, k: _bool(nc, k, True),
            "pictures": lambda nc, k: _bool(nc, k, True),
            "share-test": lambda nc, k: _bool(nc, k, True),
            "holders": lambda nc, k: _holders(str(nc[k])),
            "experiment": lambda nc, k: _digests(str(nc[k]))}


# keys that protect only secure runs (which need keys=): without keys they have no
# effect (mmvm site check warns); of them, the ones that name a secure site's peers
# are refused without keys (its keys= was lost: a typo, spaces around '='). holders
# applies to plaintext runs too (a made-up holder of a modality the site holds alone)
SECURE_ONLY = ("peers", "directory", "allow-pair-masking", "max-align-rows")
SECURE_PEERS = ("peers", "directory")


def policy_problems(nc: Mapping, site: str) -> list[tuple[str, str]]:
    """Every problem of a deployment node config's policy as ``(key, message)``, one
    per key: unknown keys (key "", with the nearest valid ones), values that do not
    parse, keys without pinned peers (key "peers"). Empty for a valid policy (or a
    simulation's node config)."""
    if "data" not in nc:
        return []
    problems = []
    unknown = [k for k in nc if k not in (*KEYS, "data", "site")]
    if unknown:
        near = {k: difflib.get_close_matches(k, (*KEYS, "data", "site"), 1)
                for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
        problems.append(("", f"node config of site {site}: unknown keys {unknown}"
                         + (f" ({hint})" * bool(hint))
                         + f"; valid: {sorted((*KEYS, 'data', 'site'))}"))
    try:  # it names the site's files in its state folder: `../x` would be outside
        validate_site_name(site)
    except ValueError as err:
        problems.append(("site", f"node config: {err}; it names the site's files in its "
                         f"state folder and the site in the run; set site=\"<name>\""
                         + " (the data folder's name is the default)" * ("site" not in nc)))
    for key, read in _READERS.items():
        if key in nc:
            try:
                read(nc, key)
            except PolicyError as err:
                problems.append((key, str(err)))
    if not nc.get("keys") and "require-psi" not in {k for k, _ in problems} \
            and _bool(nc, "require-psi", False):
        problems.append(("require-psi", f"node config of site {site}: require-psi "
                         f"without keys would refuse every run (PSI needs a secure run, "
                         f"and that needs keys=)"))
    secure_only = [k for k in SECURE_PEERS if k in nc]
    if not nc.get("keys") and (secure_only or "require-secure" not in {
            k for k, _ in problems} and _bool(nc, "require-secure", False)):
        named = secure_only or ["require-secure"]
        problems.append(("keys", f"node config of site {site}: {', '.join(named)} "
                         f"{'belongs' if len(named) == 1 else 'belong'} to a secure site, "
                         f"but keys= is missing (a typo, or spaces around its '=', drop "
                         f"it): without keys the site would answer "
                         f"plaintext runs, which send its sample ids in clear. Give "
                         f"keys=\"/path/site_keys.json\" (mmvm site check shows how "
                         f"Flower reads the node config)"))
    if nc.get("keys") and "peers" not in nc:
        problems.append(("peers", f"node config of site {site}: a site with keys must "
                         f"pin its peers, one entry per other site of its public key "
                         f"directory: peers=\"<site>=<fingerprint>;<site>=<fingerprint>\" "
                         f"(or peers=\"*\" to trust every directory entry)"))
    return problems


def site_name(nc: Mapping) -> str:
    """A deployment site's name (``data`` in its node config): its ``site``, by default
    its data folder's name."""
    return str(nc.get("site", Path(str(nc["data"])).expanduser().name))


def state_folder(nc: Mapping, site: str) -> Path:
    """A deployment site's state folder: its node config's ``state``, by default
    ``~/.mmvm/state/<site>`` (a name that is no site name is refused there: ``..``)."""
    if not nc.get("state"):
        validate_site_name(site)
    return Path(str(nc.get("state", "")) or Path("~/.mmvm/state") / site).expanduser()


def redacted(text: str, nc: Mapping) -> str:
    """``text`` with a deployment's folders (``data``, ``keys``, ``directory`` and its
    state folder, the default one too; as written and resolved) named by their node
    config keys, ``<data>/train.parquet``: where a site keeps its files is not the
    server's to learn. A simulation's (no ``data``) is left as it is."""
    if not nc.get("data"):
        return text
    folders = {}
    for key in ("data", "keys", "directory"):
        if nc.get(key):
            folders[key] = Path(str(nc[key])).expanduser()
    try:
        folders["state"] = state_folder(nc, site_name(nc))
    except ValueError:  # not a site name: no default folder to name
        pass
    forms = {(str(form).rstrip(os.sep), key) for key, folder in folders.items()
             for form in (folder, folder.absolute(), folder.resolve())}
    for form, key in sorted(forms, key=lambda f: -len(f[0])):  # the innermost first
        if form.startswith(os.sep) and form != os.sep:  # absolute, and whole: /srv/a
            # is not /srv/ab (a relative "data" would be any word "data")
            text = re.sub(re.escape(form) + r"(?![^/\s'\":,;)\]])", f"<{key}>", text)
    return text


def runs_bytes(state: Path) -> int:
    """The bytes of the files in ``state``'s run folders (``run-<id>``; links not
    followed): what :func:`check_state_room` bounds."""
    total = 0
    for run in state.glob("run-*"):
        if run.is_dir() and not run.is_symlink():
            for root, _, names in os.walk(run):
                for name in names:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_size
                    except OSError:  # another run's temporary file, renamed since
                        continue
    return total


def load_policy(nc: Mapping, site: str) -> SitePolicy:
    """The policy of a SuperNode's node config (``site`` names it in messages);
    refused, with every problem (:func:`policy_problems`), if it has any."""
    if "data" not in nc:  # simulation: partition-id / num-partitions only
        return SitePolicy(test_bed=True)
    problems = policy_problems(nc, site)
    if problems:
        raise PolicyError("; ".join(message for _, message in problems))
    keys = str(Path(str(nc["keys"])).expanduser()) if nc.get("keys") else ""
    return SitePolicy(
        keys=keys, directory=str(Path(str(nc["directory"])).expanduser())
        if nc.get("directory") else "",
        state=str(state_folder(nc, site)),
        require_secure=_bool(nc, "require-secure", bool(keys)),
        allow_collect=_bool(nc, "allow-collect", not keys),
        peers=_peers(str(nc["peers"])) if "peers" in nc else None,
        allow_pair_masking=_bool(nc, "allow-pair-masking", False),
        require_psi=_bool(nc, "require-psi", False),
        min_rows=_positive(nc, "min-rows", 1),
        **{k.replace("-", "_"): _positive(nc, k, v) for k, v in LIMITS.items()},
        eval_labels=_labels(str(nc["eval-labels"])) if "eval-labels" in nc
        else ("label",) if keys else ("*",),
        # the host's hardware is the site's: never the submitter's cuda:N on a shared host
        device=_device(str(nc["device"])) if "device" in nc else "auto",
        streaming=_bool(nc, "streaming", False) if "streaming" in nc else None,
        allow_compile=_bool(nc, "allow-compile", False),
        report_losses=_bool(nc, "report-losses", True),
        pictures=_bool(nc, "pictures", True),
        # a site that keeps its losses and sizes keeps its test posteriors too
        share_test=_bool(nc, "share-test", _bool(nc, "report-losses", True)),
        holders=_holders(str(nc["holders"])) if "holders" in nc else None,
        experiments=_digests(str(nc["experiment"])) if "experiment" in nc else (),
        sources=tuple(k for k in KEYS if k in nc))


def missing_paths(nc: Mapping) -> list[str]:
    """The paths of a deployment node config that are not there, as ``key=path
    (what is missing)``: a typo found when the site starts a run, not as a bare
    FileNotFoundError of the first message."""
    found = []
    data = Path(str(nc.get("data", ""))).expanduser()
    if "data" in nc and not (data / "train.parquet").is_file():
        found.append(f"data={nc['data']} (" + ("no train.parquet there)" if data.is_dir()
                                              else "no such folder)"))
    for key in ("keys", "directory"):
        if nc.get(key) and not Path(str(nc[key])).expanduser().exists():
            found.append(f"{key}={nc[key]} (no such file or folder)")
    return found

