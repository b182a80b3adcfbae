"""Secure mode at a site: the sketches that prove the server's mean is the holders'.

:mod:`mmvm.secure.sketch` has the arithmetic and why it works. Here, the protocol:

1. at attach the site draws its sketch key (kept in its secure state) and seals to
   every co-holder the keys of the groups the two share (kind ``sketchkey``); the
   server sends each window's request with the co-holders' key envelopes, and the
   site opens those it lacks before it trains;
2. its masked update of a shared modality carries one row block per holder (its
   own group key's and every co-holder's), masked and weighted like the weights,
   the masks bound to the keys as it holds them (:func:`key_view`): a co-holder
   that sealed two holders different keys (or one none) would read from its own
   averaged rows projections of their weights apart; their masks then do not
   cancel, and a site without every co-holder's key masks nothing and names it;
3. the server's mean comes with the averaged rows, the window they are of and the
   total weight (the holders' sample count, which sets the rounding allowed);
   before the mean is loaded (a window, the cross-site evaluation, the evaluation),
   the site recomputes its own rows of it and refuses a mean that does not match,
   and the mean of a window before the last one it took (a rollback). A mismatch
   is final: the site refuses every later mean of the run, since pass or fail of
   tries with other rows would tell the server the site's projections.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from mmvm.federation.messages import (
    KIND_SKETCH,
    SKETCH,
    SKETCH_WINDOW,
    Arrays,
    model_arrays,
)
from mmvm.secure import sketch
from mmvm.secure.envelope import open_envelope, seal
from mmvm.secure.errors import PeerContentError, SecurityError
from mmvm.secure.session import SiteSecrets, b64, unb64

KEY_ROUND, KEY_COUNTER = 0, 2**32  # (round, counter) of the key envelopes: used once


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _groups_with(sec: SiteSecrets, peer: str) -> dict[str, dict]:
    """The groups this site shares with ``peer``."""
    return {m: g for m, g in sec.state.get("groups", {}).items() if peer in g["holders"]}


def co_holders(sec: SiteSecrets) -> list[str]:
    """Every other holder of a modality this site shares."""
    groups = sec.state.get("groups", {})
    return sorted({h for g in groups.values() for h in g["holders"]} - {sec.site})


def _keys(sec: SiteSecrets) -> dict:
    """This site's sketch key and the co-holders' group keys it opened."""
    if "sketch" not in sec.state:
        raise SecurityError(f"site {sec.site}: its state of run {sec.run_id} has no "
                            f"sketch key (a run attached by an mmvm before sketches, "
                            f"2026-12-06): start a new run")
    return sec.state["sketch"]


def _own(sec: SiteSecrets, g: Mapping) -> bytes:
    return sketch.group_key(unb64(_keys(sec)["key"]), g["label"])


def attach_keys(sec: SiteSecrets) -> dict[str, bytes]:
    """Draw this site's sketch key (once per run: an attach retried keeps it) and
    seal to every co-holder the keys of the groups the two share, and no other."""
    sec.state.setdefault("sketch", {"key": b64(sketch.new_key()), "peers": {}})
    sec.save_state()  # before a key leaves: masks and checks use this one
    return {h: seal(sec.keys, sec.peer(h), json.dumps(
        {m: b64(_own(sec, g)) for m, g in sorted(_groups_with(sec, h).items())}).encode(),
        run_id=sec.run_id, round=KEY_ROUND, counter=KEY_COUNTER, kind=KIND_SKETCH)
        for h in co_holders(sec)}


def take_keys(sec: SiteSecrets, blobs: Mapping[str, bytes]) -> None:
    """Open the key envelopes of co-holders whose keys this site does not have yet
    (each is one fact of the run: a second envelope of the same sender is not
    opened); an envelope from a site that is no co-holder, or one with the keys of
    other groups than the two share, is refused."""
    if not blobs and not co_holders(sec):  # it shares nothing: no keys to hold
        return
    held = _keys(sec)["peers"]
    stray = sorted(set(blobs) - set(co_holders(sec)))
    if stray:
        raise SecurityError(f"site {sec.site}: sketch keys from {stray}, which share no "
                            f"modality with it")
    new = {}
    for sender in sorted(set(blobs) - set(held)):
        try:
            payload = open_envelope(sec.keys, sec.peer(sender), blobs[sender],
                                    run_id=sec.run_id, expected_round=KEY_ROUND,
                                    expected_counter=KEY_COUNTER, kind=KIND_SKETCH)
        except SecurityError as err:  # the sender's, or the relay's, fault: say whose
            raise type(err)(f"site {sec.site}: the sketch key envelope from "
                            f"{sender!r}: {err}") from err
        try:
            keys = {str(m): unb64(k) for m, k in json.loads(payload).items()}
            if any(len(k) != sketch.KEY_BYTES for k in keys.values()):
                raise ValueError("a key that is not 32 bytes")
        except (ValueError, TypeError, AttributeError, RecursionError) as err:
            raise PeerContentError(f"site {sec.site}: {sender} sealed sketch keys that "
                                   f"do not decode ({err})") from None
        if set(keys) != set(_groups_with(sec, sender)):  # what each was told: the server's
            raise SecurityError(f"site {sec.site}: {sender} sealed it sketch keys of "
                                f"{sorted(keys)[:8]}, and this site was told the two "
                                f"share {sorted(_groups_with(sec, sender))}: the server "
                                f"told them different groups")
        new[sender] = {m: b64(k) for m, k in keys.items()}
    if new:
        sec.state["sketch"]["peers"] = {**held, **new}
        sec.save_state()
    missing = sorted(h for h in co_holders(sec) if h not in _keys(sec)["peers"])
    if missing:
        raise SecurityError(f"site {sec.site}: no sketch keys from {missing} (each "
                            f"holder seals its co-holders its key at attach, and the "
                            f"server brings them with every window): it masks nothing "
                            f"without them")


def key_view(sec: SiteSecrets, m: str) -> str:
    """A digest of the group keys of ``m`` as this site holds them, its own too (its
    masks are bound to it)."""
    g, peers = sec.state["groups"][m], _keys(sec)["peers"]
    view = [[h, b64(_own(sec, g)) if h == sec.site else peers[h][m]]
            for h in g["holders"]]
    return hashlib.sha256(json.dumps(view).encode()).hexdigest()


def sketch_rows(sec: SiteSecrets, m: str, index: int, arrays: list[np.ndarray]
                ) -> np.ndarray:
    """``(holders, ROWS)``: each holder's rows of this site's ``arrays`` of ``m`` for
    window ``index`` (:func:`take_keys` made sure it holds every key)."""
    g, peers = sec.state["groups"][m], _keys(sec)["peers"]
    return np.stack([sketch.rows(_own(sec, g) if h == sec.site else unb64(peers[h][m]),
                                 index, arrays) for h in g["holders"]])


def _malformed(rows: np.ndarray, window: np.ndarray, holders: int) -> str:
    """What is wrong with the rows and the window the server sent with a mean."""
    if not rows.size:
        return "no sketch rows (the holders' proof that it is their mean)"
    if rows.shape != (holders, sketch.ROWS):
        return f"sketch rows of shape {rows.shape}, not ({holders}, {sketch.ROWS})"
    if window.shape != (2,) or not float(window[0]).is_integer() or \
            not 0 <= window[0] < 2**31:
        return f"its window and total weight are {window.tolist()[:4]}"
    if not np.isfinite(window[1]) or not 0 < window[1] <= 2**27:
        return f"a total weight of {window[1]} (at most 2^27 samples can be masked)"
    return ""


def check_mean(sec: SiteSecrets, received: Arrays, taken: Mapping[str, list],
               own: tuple[int, float]) -> dict[str, list]:
    """``[window, digest]`` of each shared modality's mean in ``received``, once this
    site's own rows of it match and it is no older than the one it last took
    (``taken``, kept with the site's state: a state rolled back to a snapshot takes
    that snapshot's mean again), and is that very mean where of the same window (a
    modality too few holders answered keeps its last mean). ``own``: the last window
    this site unmasked and its weight: of that window's mean, the total weight is at
    least its own, whatever the server says (the tolerance's fixed point share)."""
    # (a request without a mean, window 0's, has nothing to refuse, and a site that
    # never attached has no sketch state to read)
    refused = _keys(sec).get("refused") if received else None
    if refused:
        raise SecurityError(f"site {sec.site}: it found a mean of the server that was "
                            f"not its holders' ({refused}) and takes no more of this run")
    groups, out = sec.state.get("groups", {}), {}
    for m in sorted(set(received) & set(groups)):
        g, arrays = groups[m], received[m]
        mean = model_arrays(arrays)
        rows = np.asarray(arrays.get(SKETCH, np.zeros(0)), dtype=np.float64)
        window = np.asarray(arrays.get(SKETCH_WINDOW, np.zeros(0)), dtype=np.float64)
        what = f"site {sec.site}: the server's mean of {m!r}"
        if why := _malformed(rows, window, len(g["holders"])):
            raise SecurityError(f"{what} comes with {why}; nothing was loaded")
        w, digest = int(window[0]), weights_digest(mean)
        last = list(taken.get(m, [-1, ""]))
        if w < last[0] or w == last[0] and digest != last[1]:
            took = "another mean of that window" if w == last[0] else \
                f"the mean of window {last[0] + 1}"
            raise SecurityError(f"{what} is of window {w + 1}, and the site took {took} "
                                f"already; nothing was loaded")
        weight = max(float(window[1]), own[1] if w == own[0] else 1.0)
        if not sketch.matches(_own(sec, g), w, [mean[n] for n in sorted(mean)],
                              rows[g["holders"].index(sec.site)], len(g["holders"]),
                              weight):
            sec.state["sketch"]["refused"] = f"{m!r}, window {w + 1}"
            sec.save_state()  # before the answer: one such answer a run
            raise SecurityError(f"{what} (window {w + 1}) is not the mean its holders "
                                f"sent: its sketch does not match (the server changed "
                                f"it, or a co-holder sketched other weights than it "
                                f"masked); nothing was loaded, and the site takes no "
                                f"other mean of this run")
        out[m] = [w, digest]
    return out
