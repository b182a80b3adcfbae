"""The federation's messages: one request and one reply dataclass per step.

    describe -> align (secure mode only) -> attach -> window 0 .. W-1 -> evaluate
                                                   (secure, shared modalities: unmask
                                                    after each window, confirm before it
                                                    when a holder dropped; plaintext:
                                                    heldout before evaluate, cross_eval.py)
    resume (a restarted server, instead of describe .. attach) -> window w .. W-1

Both modes speak the same messages; what differs is what fills them (sample ids or a
count, plain Arrow tables or sealed envelopes, weights or masked weights). Every field
declares how it travels, so one codec (``wire/records.py``) maps any message to a
Flower ``RecordDict`` and back, and which fields are payload, so every run counts its
bytes the same way (:func:`payload_bytes`).

Wire kinds of a field (``metadata["wire"]``):

- ``value``: a Flower config value (str, int, float, bool, bytes, or a list of str /
  int) in the message's ``body`` record; ``metadata["type"]`` is checked on decode.
- ``json``: a small nested structure (plan arguments, peer rows, metrics) as JSON.
- ``blobs``: ``{name: bytes}`` (posterior tables or envelopes per counterpart).
- ``arrays``: ``{modality: {parameter: ndarray}}`` (weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

Arrays = dict[str, dict[str, np.ndarray]]
SERVER = "server"  # the counterpart of every posterior table in plaintext mode
MASK_WEIGHT = "__weight__"  # secure mode: the masked sample count next to masked weights
SKETCH = "__sketch__"  # and each holder's sketch rows of them (mmvm.secure.sketch);
SKETCH_WINDOW = "__sketch_window__"  # the mean's window, beside the averaged sketch
KIND_POSTERIOR = "posterior"  # envelope kinds: a window's posteriors to one peer,
KIND_SHARE = "selfshare"  # and shares of a self-mask seed,
KIND_VIEW = "view"  # and the unmask view a site committed to (dropouts),
KIND_TEST = "testposterior"  # and a site's test posteriors to one peer (cross-site)
KIND_SKETCH = "sketchkey"  # and a holder's sketch key to its co-holders (at attach)


def model_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A modality's parameters without what secure mode sends beside them."""
    return {n: a for n, a in arrays.items() if n not in (MASK_WEIGHT, SKETCH, SKETCH_WINDOW)}


class MessageError(ValueError):
    """A message that does not have the shape its kind requires."""


def _value(kind: type, of: type | None = None, *, payload: bool = False, default: Any = None):
    meta = {"wire": "value", "type": kind, "of": of, "payload": payload}
    if default is None:
        return field(metadata=meta)
    return field(default_factory=(lambda: list(default)) if isinstance(default, list)
                 else (lambda: default), metadata=meta)


MAX_JSON_CHARS = 1 << 20  # a JSON field's text (what grows with rows travels as bytes)


def _json(*, payload: bool = False, default: Any = dict,
          max_chars: int = MAX_JSON_CHARS):
    """A JSON field; its text is refused beyond ``max_chars`` before it is parsed
    (parsing costs ~6x the text in Python objects)."""
    return field(default_factory=default, metadata={"wire": "json", "payload": payload,
                                                    "max_chars": max_chars})


def _blobs():
    return field(default_factory=dict, metadata={"wire": "blobs", "payload": True})


def _arrays(*, payload: bool = True):
    return field(default_factory=dict, metadata={"wire": "arrays", "payload": payload})


# ------------------------------------------------------------------------ describe
@dataclass
class DescribeRequest:
    kind: ClassVar[str] = "describe"


@dataclass
class DescribeReply:
    """Who the site is. Plaintext: its sample ids (sorted); secure: only their count,
    and a sealed id-key contribution for every other site of its key directory."""

    kind: ClassVar[str] = "describe"
    site: str = _value(str)
    modalities: list[str] = _value(list, str)
    n: int = _value(int)
    labelled: bool = _value(bool)
    identifiers: list[str] = _value(list, str, payload=True, default=[])
    sealed: dict[str, bytes] = _blobs()
    identity: str = _value(str, default="")  # secure: its public key record


# ------------------------------------------------------------------------ align
@dataclass
class AlignRequest:
    """Secure mode. Keyed pseudonyms: the other sites' sealed id-key contributions,
    by sender. PSI: ring step ``step`` of the ring ``ring`` (sorted site names), with
    the predecessor's sealed set from step 1 on."""

    kind: ClassVar[str] = "align"
    sealed: dict[str, bytes] = _blobs()
    step: int = _value(int, default=0)
    ring: list[str] = _value(list, str, default=[])
    # every participant's described sample count: a site bounds its peers' sets by
    # them before its identifiers leave (pseudonyms) and checks the ring sets (PSI)
    counts: dict = _json()


@dataclass
class AlignReply:
    """Secure mode: the site's identifiers once aligned (keyed pseudonyms, sorted, or
    PSI tags); with PSI alignment, before that, sealed sets for the next site."""

    kind: ClassVar[str] = "align"
    identifiers: list[str] = _value(list, str, payload=True, default=[])
    sealed: dict[str, bytes] = _blobs()
    # PSI, last ring step: the tags of the set this site finished, and whose set it is
    origin: str = _value(str, default="")
    tags: list[str] = _value(list, str, payload=True, default=[])


# ------------------------------------------------------------------------ attach
@dataclass
class AttachRequest:
    """The federation's row order and plan, as far as this site needs it.

    ``rows[i]`` is the aligned row of the i-th identifier the site reported;
    ``shared`` maps each modality the site shares with others to its holders' names
    (FedAvg groups); in secure mode ``peers`` gives per peer its modalities and
    ``peer_rows`` the rows both hold (sorted little-endian uint32: a site bounds
    them by its own rows, and bytes cost what they weigh, where JSON numbers cost
    ~6x in Python objects before any check), so the site can seal posteriors to it
    directly."""

    kind: ClassVar[str] = "attach"
    n: int = _value(int)
    rows: list[int] = _value(list, int, payload=True)
    float16: bool = _value(bool)
    plan: dict = _json()
    shared: dict = _json()
    peers: dict = _json(payload=True)
    delta_tol: float = _value(float, default=-1.0)
    peer_rows: dict[str, bytes] = _blobs()


@dataclass
class AttachReply:
    """The site's own posteriors for window 0's rows, per recipient; secure mode: its
    sketch key sealed to each co-holder (``keys``)."""

    kind: ClassVar[str] = "attach"
    posteriors: dict[str, bytes] = _blobs()
    keys: dict[str, bytes] = _blobs()


# ------------------------------------------------------------------------ window
@dataclass
class WindowRequest:
    """Train window ``window``: the other modalities' posteriors for the site's rows
    of it (per sender) and the averaged weights of the modalities it shares.

    ``absent``: sites that missed the last window (nothing of theirs comes with this
    one; their modality is absent from the prior of their rows). ``resync``: this
    site missed the last window; with event-triggered exchange it forgets what it
    thinks it sent and received, and sends all its rows again. ``persist``: the server
    checkpoints after this window, so the site writes its state durably (and keeps a
    snapshot of it) before it answers; a site kept in memory writes nothing between.
    ``excluded``: sites excluded from the rest of the run (nothing is sealed to them)."""

    kind: ClassVar[str] = "window"
    window: int = _value(int)
    posteriors: dict[str, bytes] = _blobs()
    weights: Arrays = _arrays()
    absent: list[str] = _value(list, str, default=[])
    excluded: list[str] = _value(list, str, default=[])
    resync: bool = _value(bool, default=False)
    persist: bool = _value(bool, default=True)
    keys: dict[str, bytes] = _blobs()


@dataclass
class WindowReply:
    """Sums of the window's training metrics, the site's own posteriors for the next
    window's rows (per recipient) and its shared weights (masked in secure mode)."""

    kind: ClassVar[str] = "window"
    metrics: dict = _json()
    posteriors: dict[str, bytes] = _blobs()
    weights: Arrays = _arrays()
    shares: dict[str, bytes] = _blobs()  # secure: self-mask seed shares, per recipient


# ------------------------------------------------------------------------ unmask
@dataclass
class UnmaskRequest:
    """Secure mode, after a window with shared modalities: who survived per masked
    modality, and the other holders' self-mask shares for this site (per sender)."""

    kind: ClassVar[str] = "unmask"
    window: int = _value(int)
    groups: dict = _json()  # modality -> {"survivors": [names], "dropped": [names]}
    shares: dict[str, bytes] = _blobs()
    confirmations: dict[str, bytes] = _blobs()  # per sender: its sealed view (confirm)


@dataclass
class ConfirmRequest:
    """Secure mode, before an unmask whose view has dropped holders: the view this
    site is to commit to, and seal to its co-survivors (see
    :func:`mmvm.federation.sealed_weights.confirm`)."""

    kind: ClassVar[str] = "confirm"
    window: int = _value(int)
    groups: dict = _json()  # as UnmaskRequest.groups


@dataclass
class ConfirmReply:
    """The committed view, sealed to each co-survivor (kind ``view``)."""

    kind: ClassVar[str] = "confirm"
    sealed: dict[str, bytes] = _blobs()


def unmask_view(groups: dict) -> dict[str, dict[str, list[str]]]:
    """An unmask request's view in its one form: per modality exactly ``survivors``
    and ``dropped``, each a sorted list of distinct site names. A site keeps the view
    with its state (to repeat its answer for the same view), so nothing else the
    server put there is stored, and one view always compares equal to itself."""
    if not isinstance(groups, dict):
        raise MessageError("unmask request: groups must map modalities to views")
    out = {}
    for m, view in groups.items():
        if not isinstance(view, dict) or set(view) != {"survivors", "dropped"}:
            raise MessageError(f"unmask request: the view of {m!r} must hold exactly "
                               f"'survivors' and 'dropped'")
        for key, names in view.items():
            if not isinstance(names, list) or len(set(map(str, names))) != len(names) \
                    or not all(isinstance(n, str) for n in names):
                raise MessageError(f"unmask request: {key} of {m!r} must be a list of "
                                   f"distinct site names")
        out[m] = {k: sorted(view[k]) for k in ("survivors", "dropped")}
    return out


@dataclass
class UnmaskReply:
    """Per modality: shares of the other survivors' self-mask seeds and this
    window's pair seeds with the dropped sites (base64)."""

    kind: ClassVar[str] = "unmask"
    shares: dict = _json(payload=True)
    seeds: dict = _json(payload=True)


# ------------------------------------------------------------------------ resume
@dataclass
class ResumeRequest:
    """A restarted server continues run ``run`` after window ``window`` (its last
    checkpoint): where is this site in it? A plaintext site that trained beyond
    ``window + 1`` goes back to its snapshot of ``window`` (``-2``: only report)."""

    kind: ClassVar[str] = "resume"
    run: str = _value(str)
    window: int = _value(int, default=-2)
    challenge: str = _value(str, default="")  # secure: to be signed (mmvm.secure.identity)


@dataclass
class ResumeReply:
    """The site's place in the run: its phase, last window trained and unmasked."""

    kind: ClassVar[str] = "resume"
    site: str = _value(str)
    phase: str = _value(str)
    window: int = _value(int)
    unmasked: int = _value(int)
    proof: str = _value(str, default="")  # secure: the signed challenge
    view: dict = _json()  # secure: the unmask view it committed to ({window, groups})


# ------------------------------------------------------------------------ evaluate
@dataclass
class HeldOutRequest:
    """Before the evaluation (cross-site evaluation, :mod:`mmvm.federation.cross_eval`):
    the site loads the averaged weights of the modalities it shares and answers with
    its test samples' ids and posteriors (plaintext). Secure runs take two steps
    (:mod:`mmvm.federation.sealed_heldout`): step 0 asks for keyed pseudonyms of the
    test ids (with ``align = "psi"``: whether the site takes part; steps 1 to R are
    then the PSI ring's steps 0 to R - 1 over the test sets); the last step (1, or
    R + 1) gives the aligned test row of each identifier (``rows``, of ``n``) and per
    peer the test rows both hold (``peer_rows``, sorted little-endian uint32), to seal
    the site's posteriors of them to that peer."""

    kind: ClassVar[str] = "heldout"
    weights: Arrays = _arrays(payload=False)
    step: int = _value(int, default=0)
    n: int = _value(int, default=0)
    rows: list[int] = _value(list, int, payload=True, default=[])
    peer_rows: dict[str, bytes] = _blobs()
    counts: dict = _json()  # secure: every site's count of test identifiers
    ring: list[str] = _value(list, str, default=[])  # secure, PSI: the test sets' ring
    sealed: dict[str, bytes] = _blobs()  # PSI: the predecessor's sealed test set


@dataclass
class HeldOutReply:
    """The site's test sample ids (secure: keyed pseudonyms, sorted, or at the PSI
    ring's last step the tags of the set it finished) and its own modalities'
    posteriors for them, per recipient: ``posteriors[SERVER]`` (plaintext; rows:
    positions in ``identifiers``), or envelopes per peer (secure: the PSI ring's set
    to the next site, or at the last step its posteriors; rows: aligned test rows)."""

    kind: ClassVar[str] = "heldout"
    identifiers: list[str] = _value(list, str, payload=True, default=[])
    posteriors: dict[str, bytes] = _blobs()
    reason: str = _value(str, default="")  # why it sent none


@dataclass
class EvaluateRequest:
    """The last message. ``posteriors`` (runs with a cross-site evaluation): the other
    modalities' test posteriors of the site's test samples: ``posteriors[SERVER]`` in
    plaintext (rows: positions in the ids of its :class:`HeldOutReply`), the peers'
    envelopes by sender in secure runs (rows: aligned test rows)."""

    kind: ClassVar[str] = "evaluate"
    weights: Arrays = _arrays(payload=False)
    collect: bool = _value(bool, default=False)
    posteriors: dict[str, bytes] = _blobs()
    draw: bool = _value(bool, default=True)  # cross-site: one draw of z (False: means)


@dataclass
class EvaluateReply:
    """What the site measured on its own data; its weights if it hands them in."""

    kind: ClassVar[str] = "evaluate"
    site: str = _value(str)
    modalities: list[str] = _value(list, str)
    metrics: dict = _json()
    model: Arrays = _arrays(payload=False)


REQUESTS = {c.kind: c for c in (DescribeRequest, AlignRequest, AttachRequest,
                                 WindowRequest, ConfirmRequest, UnmaskRequest,
                                 ResumeRequest, HeldOutRequest, EvaluateRequest)}
REPLIES = {c.kind: c for c in (DescribeReply, AlignReply, AttachReply, WindowReply,
                                ConfirmReply, UnmaskReply, ResumeReply, HeldOutReply,
                                EvaluateReply)}


@dataclass(frozen=True)
class SiteFailure:
    """Not a message: what a transport returns, in a window's exchange, for a site that
    answered with an error other than a refusal by its protection (a crash, a full
    disk, a reply that does not decode). The round loop leaves the site out of the
    window, as one that is away (more than ``max-refused`` in a row exclude it)."""

    site: str  # its name where the transport knows it, else its key
    reason: str
    kind: ClassVar[str] = "failure"


def payload_bytes(message: Any) -> int:
    """Bytes of a message's payload fields: identifiers (UTF-8), rows (4 bytes each),
    posterior tables and envelopes, weight arrays, JSON payload (UTF-8 of its dump).
    The same rule for every mode, so plaintext and secure runs compare."""
    total = 0
    for f in fields(message):
        if not f.metadata.get("payload"):
            continue
        v = getattr(message, f.name)
        wire = f.metadata["wire"]
        if wire == "blobs":
            total += sum(len(b) for b in v.values())
        elif wire == "arrays":
            total += sum(int(a.nbytes) for arrays in v.values() for a in arrays.values())
        elif wire == "json":
            total += len(json.dumps(v).encode()) if v else 0
        elif f.metadata["of"] is str:
            total += sum(len(s.encode()) for s in v)
        else:
            total += 4 * len(v)
    return total
