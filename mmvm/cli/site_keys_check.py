"""``mmvm site check``: the site's keys, the public key directory and its pinned peers,
read as ``SealedChannel`` reads them."""

from __future__ import annotations

from pathlib import Path

from mmvm.cli.site_findings import ERROR, OK, WARNING, NodeCheck, attempt
from mmvm.federation.policy import SitePolicy


def check_keys(check: NodeCheck, p: SitePolicy, pinned: bool, unpinned: bool) -> None:
    """The site's keys (its own, under its name), the directory (its entry is the
    site's key; who may change it) and, ``pinned``, the peers it trusts; ``unpinned``
    (no peers= at all): the peers= line to write for the directory's other sites."""
    from mmvm.secure.keys import SiteKeys, load_public_directory

    keys = Path(p.keys)
    key_file = keys / "site_keys.json" if keys.is_dir() else keys
    dir_file = Path(p.directory) if p.directory else key_file.parent / "public_keys.json"
    own = attempt(check, "keys", lambda: SiteKeys.load(key_file))
    # the site under either name (a wrong site= is said above): never a peer to pin
    selves = {check.site} | ({own.site} if own is not None else set())
    if own is not None and own.site != check.site:
        check.add("keys", ERROR, f"{key_file} holds the keys of {own.site!r}, and the node "
                  f"config names site {check.site!r} (site=, or the data folder's name)")
        own = None
    elif own is not None:
        check.add("keys", OK, f"{key_file}: site {own.site}, fingerprint "
                  f"{own.public.fingerprint}")
    if not p.directory and not dir_file.exists():
        check.add("directory", ERROR, f"{dir_file}: no such file; set directory= to the "
                  f"public key directory (public_keys.json) your coordinator sent (without "
                  f"it, it is looked for next to the site's keys)")
        return
    directory = attempt(check, "directory", lambda: load_public_directory(dir_file))
    if directory is not None:
        _directory(check, p, own, directory, dir_file)
        if pinned:
            _peers(check, p, directory, dir_file, selves)
        elif unpinned:  # the policy error says peers is missing; name what to pin
            others = sorted(n for n in directory if n not in selves)
            check.add("peers", ERROR, "to pin this directory's other sites: peers=\""
                      + ";".join(f"{n}=<fingerprint>" for n in others) + "\", each "
                      "fingerprint confirmed with that site's administrator out of band "
                      "(not copied from the directory)")


def _directory(check: NodeCheck, p: SitePolicy, own, directory: dict, path: Path
               ) -> None:
    """The directory's entry for this site (when its keys loaded); who may change it."""
    mine = directory.get(check.site)
    if mine is None:
        check.add("directory", ERROR, f"{path} has no entry for {check.site}: the other "
                  f"sites cannot seal anything to it")
    elif own is not None and mine.fingerprint != own.public.fingerprint:
        check.add("directory", ERROR, f"{path}'s entry for {check.site} has fingerprint "
                  f"{mine.fingerprint}, not this site's {own.public.fingerprint} (a "
                  f"stale or replaced directory)")
    else:
        check.add("directory", OK, f"{path}: {len(directory)} sites"
                  + "; this site's entry is its own key" * (own is not None))
    for f in (path, path.parent):
        if f.stat().st_mode & 0o022:
            check.add("directory", WARNING, f"{f} is writable by group/others (mode "
                      f"{f.stat().st_mode & 0o777:o}): whoever can write it decides "
                      f"whom the site trusts; chmod go-w it")


def _peers(check: NodeCheck, p: SitePolicy, directory: dict, path: Path,
           selves: set[str]) -> None:
    from mmvm.federation.policy import PolicyError

    try:
        trusted = p.trusted(check.site, directory)
    except PolicyError as err:
        check.add("peers", ERROR, str(err))
        return
    peers = sorted(n for n in trusted if n != check.site)
    listing = "; ".join(f"{n} {directory[n].fingerprint}" for n in peers)
    if p.peers is None:
        check.add("peers", WARNING, f"peers=\"*\": every entry of {path} is trusted, "
                  f"including any the operator adds later: {listing}")
    else:
        ignored = sorted(set(directory) - set(trusted) - selves)
        check.add("peers", OK, f"pinned and matching the directory: {listing}")
        if ignored:
            check.add("peers", WARNING, f"not pinned, so not trusted: {', '.join(ignored)} "
                      f"(nothing is sealed to them or accepted from them: a run with them "
                      f"fails at this site; pin them if they are this federation's sites)")
    if not peers:
        check.add("peers", ERROR, "no peer besides the site itself: a secure run needs "
                  "at least one other site")
