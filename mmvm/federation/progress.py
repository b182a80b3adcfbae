"""Where a site is in a run: the protocol's state machine, kept with the site's state.

    new -> described -> [aligned (secure)] -> attached -> window 0 < 1 < ... -> evaluated
                                          or: refused (its policy refused the plan: final)

Each step happens once per run: a second describe, align or attach is refused (a
server that re-attaches a site with another plan could otherwise make it mask new
weights with the masks of an earlier window), windows must strictly increase (never
two masked updates for one run, window and modality), and a window's unmask step
follows that window once. The record is saved with the site's model, in the same
atomic file, so it cannot run ahead of or behind the training it describes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mmvm.federation.coordinator import FederationError

PHASES = ("new", "described", "aligned", "attached", "evaluated", "refused")
PRE_ATTACH = PHASES[:3]  # no weights trained yet: the model is the config's seed's
# what a site says when asked to evaluate a run it finished again, with other inputs
# (the server then gives no resume hint: there is nothing left to continue)
COMPLETE = "the run is complete here (its final evaluation was answered); start a new run"
# the evaluation's place among the windows a secure site begins on the server's
# means (SealedChannel.begin_window): after every window
EVALUATION = 2**31



class ProtocolOrderError(FederationError):
    """A request that does not fit where the site is in the run."""


@dataclass
class Progress:
    phase: str = "new"
    align_steps: int = 0  # align requests answered (PSI alignment takes several)
    window: int = -1  # last window trained
    unmasked: int = -1  # last window whose unmask step was answered
    mode: str = ""  # the channel the run began with ("plain", "sealed/<alignment>")
    config: str = ""  # the experiment's digest the run began with (mmvm.config)
    held_out: str = ""  # digest of the weights its heldout answer was made with
    cross_scored: bool = False  # an evaluation scored the server's test posteriors
    # secure: per shared modality, [window, digest] of the last mean the site took
    # (it takes none older, nor another of that window: mmvm.federation.sealed_sketch)
    means: dict = field(default_factory=dict)
    owner: str = ""  # the Flower run whose messages the state answers (a resume moves it)

    def _need(self, site: str, what: str, *phases: str) -> None:
        if self.phase not in phases:
            raise ProtocolOrderError(f"site {site}: {what} refused: the site is "
                                     f"{self.phase!r} in this run (expects "
                                     f"{' or '.join(map(repr, phases))})")

    def answers(self, site: str, kind: str, flower_run: str) -> None:
        """Only the Flower run that owns this state, or a resume (which then owns it):
        a second ``resume`` of a run whose server still lives (its log stream ended,
        say) would otherwise interleave two servers' messages over one state."""
        if flower_run and self.owner and self.owner != flower_run and kind != "resume":
            raise ProtocolOrderError(
                f"site {site}: {kind} of Flower run {flower_run} refused: the site's "
                f"state of this run answers Flower run {self.owner} (the last to begin "
                f"or resume it); a run resumed again continues only in the newest")

    def describe(self, site: str) -> None:
        self._need(site, "describe", "new")

    def same_mode(self, site: str, mode: str, config: str = "") -> None:
        """A run's protection and experiment are fixed when it begins: a later message
        over another channel, or with another experiment config, is refused. (Else a
        plaintext run resuming a secure run's state would get the site's unmasked
        weights, or roll it back so that a window is masked twice; and a resume could
        widen the model past the limits checked at attach.) A state without a mode
        comes from before modes were kept: refused; one without a config digest from
        before those were kept: taken."""
        if self.phase != "new" and self.config and config and self.config != config:
            raise ProtocolOrderError(
                f"site {site}: this run began under another experiment config; a message "
                f"with a different one is refused (a resume must bring the run config it "
                f"began with)")
        if self.phase != "new" and self.mode != mode:
            began = self.mode or "an unrecorded mode (an earlier version)"
            raise ProtocolOrderError(
                f"site {site}: this run's state began over {began}; a message over "
                f"{mode} is refused (a run's secure / alignment settings cannot change "
                f"after it began, also not on resume)")

    def align(self, site: str, step: int) -> None:
        # not once aligned: a site answers each step of its alignment once
        self._need(site, f"align step {step}", "described")
        if step != self.align_steps:
            raise ProtocolOrderError(f"site {site}: align step {step} refused: the "
                                     f"next is step {self.align_steps}")

    def attach(self, site: str, secure: bool) -> None:
        self._need(site, "attach", "aligned" if secure else "described")

    def window_(self, site: str, index: int) -> None:
        self._need(site, f"window {index}", "attached")
        if self.held_out:  # else its private weights could move under the digest
            raise ProtocolOrderError(f"site {site}: window {index} refused: its "
                                     f"training is over (it answered heldout)")
        if index <= self.window:
            raise ProtocolOrderError(f"site {site}: window {index} refused: window "
                                     f"{self.window} is already done (windows only "
                                     f"move forward)")

    def unmask(self, site: str, index: int) -> None:
        self._need(site, f"unmask of window {index}", "attached")
        if index != self.window or self.unmasked >= index:
            raise ProtocolOrderError(f"site {site}: unmask of window {index} refused "
                                     f"(last window {self.window}, last unmasked "
                                     f"{self.unmasked})")

    def resume(self, site: str) -> None:
        """Attached, or evaluated: a server that died in the final evaluation asks
        again, and an evaluated site repeats its answers (:meth:`evaluate`)."""
        if self.phase == "new":  # no state of the run where the site keeps it
            raise ProtocolOrderError(
                f"site {site}: resume refused: the site has no state of this run (its "
                f"state-dir, or its node config's state folder, is not the one the run "
                f"used, or the site never attached to it)")
        self._need(site, "resume", "attached", "evaluated")

    def evaluate(self, site: str) -> None:
        """Once: an evaluate message the site answered before gets the kept reply (the
        endpoint looks first), another (other weights or test posteriors) is refused."""
        if self.phase == "evaluated":
            raise ProtocolOrderError(f"site {site}: evaluate refused: it answered the "
                                     f"final evaluation to other inputs; {COMPLETE}")
        self._need(site, "evaluate", "attached")

    def held_out_again(self, site: str) -> None:
        """A heldout message after the training: a first answer only where attached
        (:meth:`held_out_step`), the kept one where evaluated as well."""
        self._need(site, "heldout", "attached", "evaluated")

    def held_out_step(self, site: str) -> None:
        """The heldout message is answered once a run: each answer is the test set
        encoded by the weights the server sent with it (cross_eval.py)."""
        self._need(site, "heldout", "attached")
        if self.held_out:
            raise ProtocolOrderError(f"site {site}: heldout refused: answered once in "
                                     f"this run already")

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, s: dict) -> Progress:
        p = cls(**s)
        if p.phase not in PHASES:
            raise ValueError(f"unknown protocol phase {p.phase!r}")
        return p
