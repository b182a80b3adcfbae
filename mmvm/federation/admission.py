"""Which window replies the server takes: a site that fails a window, or whose reply
the server refuses, is left out of it as a site that is away.

A reply is refused when its metrics are not finite sums, its shared weights are not
finite arrays of the modality's model (or of a modality the site does not share),
or its posteriors do not decode into rows the site holds (plaintext; in secure mode
the recipients check the envelopes: a refusal there is the recipient's protection,
which stops the run, naming the sender). One bad reply no longer ends a run of many
windows: nothing of it is averaged or routed, the site is told to resync, and
:class:`mmvm.federation.attendance.Attendance` excludes a site refused more than
``max-refused`` windows in a row from the rest of the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mmvm.federation.coordinator import Coordinator, FederationError
from mmvm.federation.window_metrics import window_sums
from mmvm.secure.unmasking import survivors_needed

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
REASON_KEPT = 300  # characters of a refusal's reason kept in the window's record


def admit(w: int, coord: Coordinator, routing, replies: Mapping, failed: Mapping[str, str],
          asked: int | None = None) -> tuple[dict, dict[str, str]]:
    """Window ``w``'s replies the server takes (``routing`` has kept their
    posteriors), and the refused sites by key with the reason (``failed``: those
    that answered with an error; ``asked``: how many sites the window was sent to,
    default all)."""
    refused = {k: f"failed: {why}" for k, why in failed.items()}
    for key, rep in replies.items():
        try:
            window_sums(rep, coord.sites[key].modalities)
        except ValueError as err:
            refused[key] = f"sent {err}"
    rest = {k: r for k, r in replies.items() if k not in refused}
    refused.update(routing.screen(coord, rest, w))
    rest = {k: r for k, r in rest.items() if k not in refused}
    refused.update(routing.receive(coord, rest))
    kept = {k: r for k, r in rest.items() if k not in refused}
    asked = len(coord.sites) if asked is None else asked
    if len(refused) == asked > 1:  # (one site asked: its own fault, max-refused's)
        full = all("No space left on device" in why for why in refused.values())
        raise FederationError(
            f"window {w + 1}/{len(coord.plan)}: every site failed or was refused, so the "
            + ("disk they write to is full (one file system under a shared state-dir?): "
               if full else "fault is more likely the run's (config, code versions) "
               "than one site's: ")
            + "; ".join(f"{coord.name(k)}: {why}" for k, why in sorted(refused.items())))
    return kept, {k: short_reason(why) for k, why in refused.items()}


def short_reason(reason: str) -> str:
    """What the window's record keeps of a reason (the server state keeps every
    window's): printable, at most :data:`REASON_KEPT` characters."""
    reason = ANSI.sub("", reason)  # Ray's coloured traceback lines, in a site's failure
    text = "".join(c if c.isprintable() else " " for c in reason)
    return text if len(text) <= REASON_KEPT else text[:REASON_KEPT] + " ..."


def check_left(w: int, coord: Coordinator, excluded: Mapping[str, str],
               new: Mapping[str, str], secure: bool) -> None:
    """After sites were ``new``-ly excluded in window ``w``: every modality must keep
    a holder, and in a secure run every shared one enough holders to be unmasked
    (:func:`~mmvm.secure.unmasking.survivors_needed`). Else the run stops, saying so:
    it would train on with a modality gone, or averaged never again (its holders
    reloading the last mean every window). Fixed, the site comes back on ``resume``."""
    for m in coord.modalities:
        n = len(coord.shared.get(m, []))
        left = [k for k in coord.sites if m in coord.sites[k].modalities
                and k not in excluded]
        need = survivors_needed(n) if secure and n > 1 else 1
        if len(left) < need:
            why = "; ".join(f"site {name} {reason}" for name, reason in new.items())
            them = "them" if len(new) > 1 else "it"
            raise FederationError(
                f"window {w + 1}: {why}. Without {them}, modality {m!r} has {len(left)} "
                f"of its {max(n, 1)} holder(s) left, and "
                + (f"a masked mean needs {need}" if need > 1 else "no one trains it")
                + f": the run stops. Fix {them}, then continue the run with resume=")
