"""Secure mode at a site: the sketches that prove the server's mean is the holders'.

:mod:`mmvm.secure.sketch` has the arithmetic and why it works. Here, the protocol:

1. at attach the site draws its sketch key (kept in its secure state) and seals it
   to every co-holder of a modality it shares (kind ``sketchkey``); the server
   sends each window's request with the co-holders' key envelopes, and the site
   opens those it lacks before it trains;
2. its masked update of a shared modality carries one row block per holder (its
   own key's and every co-holder's), masked and weighted like the weights; a
   co-holder whose key it lacks gets zeros (that holder's check then fails: only a
   server that withheld the key causes that);
3. the server's mean comes with the averaged rows and the window they are of;
   before the mean is loaded (a window, the cross-site evaluation, the evaluation),
   the site recomputes its own rows of it and refuses a mean that does not match:
   a mean the server chose, scaled, mixed or replayed from another window.
"""

from __future__ import annotations

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


def co_holders(sec: SiteSecrets) -> list[str]:
    """Every other holder of a modality this site shares."""
    groups = sec.state.get("groups", {})
    return sorted({h for g in groups.values() for h in g["holders"]} - {sec.site})


def attach_keys(sec: SiteSecrets) -> dict[str, bytes]:
    """Draw this site's sketch key (once per run: an attach retried keeps it) and
    seal it to every co-holder."""
    own = sec.state.setdefault("sketch", {"key": b64(sketch.new_key()), "peers": {}})
    sec.save_state()  # before the key leaves: masks and checks use this one
    payload = json.dumps({"key": own["key"]}).encode()
    return {h: seal(sec.keys, sec.peer(h), payload, run_id=sec.run_id, round=KEY_ROUND,
                    counter=KEY_COUNTER, kind=KIND_SKETCH) for h in co_holders(sec)}


def take_keys(sec: SiteSecrets, blobs: Mapping[str, bytes]) -> None:
    """Open the key envelopes of co-holders whose key this site does not have yet
    (each key is one fact of the run: a second envelope of the same sender is not
    opened again); an envelope from a site that is no co-holder is refused."""
    held = _keys(sec)["peers"] if blobs else {}
    stray = sorted(set(blobs) - set(co_holders(sec)))
    if stray:
        raise SecurityError(f"site {sec.site}: sketch keys from {stray}, which share no "
                            f"modality with it")
    new = {}
    for sender in sorted(set(blobs) - set(held)):
        payload = open_envelope(sec.keys, sec.peer(sender), blobs[sender],
                                run_id=sec.run_id, expected_round=KEY_ROUND,
                                expected_counter=KEY_COUNTER, kind=KIND_SKETCH)
        try:
            key = unb64(json.loads(payload)["key"])
            if len(key) != sketch.KEY_BYTES:
                raise ValueError(f"{len(key)} bytes")
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise PeerContentError(f"site {sec.site}: {sender} sealed a sketch key that "
                                   f"does not decode ({type(err).__name__})") from None
        new[sender] = b64(key)
    if new:
        sec.state["sketch"]["peers"] = {**held, **new}
        sec.save_state()


def _keys(sec: SiteSecrets) -> dict:
    """This site's sketch key and the co-holders' it opened."""
    if "sketch" not in sec.state:
        raise SecurityError(f"site {sec.site}: its state of run {sec.run_id} has no "
                            f"sketch key (a run attached by an mmvm before sketches, "
                            f"2026-12-06): start a new run")
    return sec.state["sketch"]


def sketch_rows(sec: SiteSecrets, m: str, index: int, arrays: list[np.ndarray]
                ) -> np.ndarray:
    """``(holders, ROWS)``: each holder's rows of this site's ``arrays`` of ``m`` for
    window ``index`` (zeros for a co-holder whose key never arrived)."""
    g, keys = sec.state["groups"][m], _keys(sec)
    out = np.zeros((len(g["holders"]), sketch.ROWS))
    for i, h in enumerate(g["holders"]):
        key = keys["key"] if h == sec.site else keys["peers"].get(h)
        if key is not None:
            out[i] = sketch.rows(unb64(key), g["label"], index, arrays)
    return out


def check_mean(sec: SiteSecrets, received: Arrays) -> None:
    """Refuse the server's mean unless this site's own rows of every modality it
    shares match it. The mean of an earlier window than the last passes (a modality
    too few holders answered keeps its last mean); it is still the holders'."""
    groups = sec.state.get("groups", {})
    for m in sorted(set(received) & set(groups)):
        g, arrays = groups[m], received[m]
        mean = model_arrays(arrays)
        rows = np.asarray(arrays.get(SKETCH, np.zeros(0)), dtype=np.float64)
        window = np.asarray(arrays.get(SKETCH_WINDOW, np.zeros(0)), dtype=np.float64)
        what = f"site {sec.site}: the server's mean of {m!r}"
        if rows.shape != (len(g["holders"]), sketch.ROWS) or window.shape != (1,) or \
                not float(window[0]).is_integer() or not 0 <= window[0] < 2**31:
            raise SecurityError(f"{what} comes without the holders' sketch of it; "
                                f"nothing was loaded")
        w = int(window[0])
        if not sketch.matches(unb64(_keys(sec)["key"]), g["label"], w,
                              [mean[n] for n in sorted(mean)],
                              rows[g["holders"].index(sec.site)]):
            raise SecurityError(f"{what} (window {w + 1}) is not the mean its holders "
                                f"sent: its sketch does not match (the server changed "
                                f"it, or a co-holder sketched other weights than it "
                                f"masked); nothing was loaded")
