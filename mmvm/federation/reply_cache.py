"""A site's last window and unmask replies, kept with its state.

A server that crashes after a site answered window w, but before it wrote its own
checkpoint, resumes at window w and asks again. The site must not train w a second
time (its model moved on) nor mask a second update for w (two masked updates of one
window under the same pair masks, one claimed dropped and one not, would unmask it):
it answers with the reply it sent, byte for byte (but for its loss sums, withheld
where its node config turned report-losses off since). The unmask answer is repeated only
for the same view of survivors and dropped sites; any other view is refused as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch

from mmvm.federation.messages import REPLIES


def _to_state(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _to_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_state(v) for v in value]
    return value


def _from_state(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _from_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_state(v) for v in value]
    return value


class ReplyCache:
    """``{kind: (window, view, reply)}`` for the kinds ``window``, ``unmask``,
    ``heldout`` (a secure run's steps of it apart: ``heldout.ring``, ``heldout.seal``)
    and ``evaluate`` (a server that died in the final evaluation, before it wrote the
    results, asks again on resume)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, object, object]] = {}

    def keep(self, kind: str, window: int, reply, view=None) -> None:
        self.entries[kind] = (window, view, reply)

    def get(self, kind: str, window: int, view=None):
        """The reply kept for ``kind`` at ``window`` with the same ``view``, or None."""
        entry = self.entries.get(kind)
        if entry is None or entry[0] != window or entry[1] != view:
            return None
        return entry[2]

    def state(self) -> dict:
        return {kind: {"window": w, "view": _to_state(view), "reply": _to_state(asdict(r))}
                for kind, (w, view, r) in self.entries.items()}

    @classmethod
    def from_state(cls, state: dict) -> ReplyCache:
        cache = cls()
        for kind, e in state.items():
            # "heldout.seal": a step of a kind kept apart from its others
            reply = REPLIES[kind.partition(".")[0]](**_from_state(e["reply"]))
            cache.entries[kind] = (int(e["window"]), _from_state(e["view"]), reply)
        return cache


def request_digest(inputs: Mapping, weights: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """SHA-256 of a window request's ``inputs`` and its weights: a kept reply answers
    only the request that produced it (another run over the same state, say a
    concurrent resume, would otherwise get its own window adopted by the live run)."""
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    for m in sorted(weights):
        for n in sorted(weights[m]):
            a = np.ascontiguousarray(weights[m][n])
            h.update(f"{m}/{n}/{a.dtype.str}/{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def evaluation_digest(req, policy) -> str:
    """SHA-256 of an evaluate request (:class:`EvaluateRequest`): its weights, the
    test posteriors it brings and what it asks for, under the node config's
    ``policy`` (a kept answer is not repeated once the node config changed: it may
    no longer hand in the weights, or report those labels)."""
    return request_digest({"collect": bool(req.collect), "draw": bool(req.draw),
                           "policy": policy_digest(policy),
                           "posteriors": blob_digests(req.posteriors)}, req.weights)


def window_inputs(config: str, req) -> dict:
    """What a window request (:class:`WindowRequest`) brings besides its weights: the
    experiment's digest ``config``, the sites absent, resync, and the digest of each
    sender's posteriors. Not the excluded sites: a resumed run asks its windows again
    without the exclusions (it sends excluded sites windows again), and the kept
    reply tells it nothing new."""
    return {"config": config, "absent": sorted(req.absent), "resync": bool(req.resync),
            "posteriors": blob_digests(req.posteriors)}


def blob_digests(blobs: Mapping[str, bytes]) -> dict[str, str]:
    """SHA-256 of each sender's blob, by sender (what a request's digest covers)."""
    return {s: hashlib.sha256(b).hexdigest() for s, b in sorted(blobs.items())}


def policy_digest(policy) -> str:
    """SHA-256 of every rule of a node config's policy (:class:`SitePolicy`): what a
    site's attach checks and kept answers were made under (a changed node config
    gets neither)."""
    text = json.dumps(dataclasses.asdict(policy), sort_keys=True, default=sorted)
    return hashlib.sha256(text.encode()).hexdigest()
