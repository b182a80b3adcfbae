"""What a site's attaching to a federation fixed: the aligned rows, the plan, and the
caches of event-triggered exchange. Saved with the site's state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmvm.federation.delta import PosteriorCache
from mmvm.federation.plan import Plan, PlanArgs


@dataclass
class Link:
    """What attaching to a federation fixed: the aligned rows and the plan.

    ``local_of[r]`` is the dataset row of aligned row r (-1 where this site does not
    hold the sample); ``holders``: of each own modality other sites also hold (FedAvg),
the sites the server said hold it, this one included (checked against the node config
at attach and again by each later process: :func:`mmvm.federation.site_limits.recheck`;
empty lists in a state written before they were kept)."""

    n: int
    local_of: np.ndarray
    plan_args: PlanArgs
    float16: bool = False
    holders: dict[str, list[str]] = field(default_factory=dict)
    delta_tol: float | None = None  # event-triggered exchange (delta.py)
    checked: str = ""  # digest of the node config the checks of attach last passed
    sent_cache: PosteriorCache = field(default_factory=PosteriorCache)
    others_cache: PosteriorCache = field(default_factory=PosteriorCache)
    plan: Plan = field(init=False)  # made from plan_args: windows on demand

    def __post_init__(self) -> None:
        self.plan = self.plan_args.plan(self.n)

    @property
    def shared(self) -> list[str]:
        """Own modalities whose weights are averaged with other holders'."""
        return sorted(self.holders)

    def state(self) -> dict:
        return {"n": self.n, "local_of": torch.from_numpy(self.local_of),
                "plan_args": self.plan_args.to_dict(), "float16": self.float16,
                "holders": dict(self.holders), "delta_tol": self.delta_tol,
                "checked": self.checked,
                "sent_cache": self.sent_cache.state(),
                "others_cache": self.others_cache.state()}

    @property
    def int8(self) -> bool:
        """Posteriors travel as int8 (``quantize = "int8"``, carried by the plan)."""
        return self.plan_args.quantize == "int8"

    def frame(self, rows: np.ndarray) -> np.ndarray:
        """The ones of a window's ``rows`` this site holds: the rows its posterior
        tables with the server can hold, which both sides derive from the plan."""
        return rows[self.local_of[rows] >= 0]

    def resync(self) -> None:
        """After missed windows: what this site sent or received may not have
        arrived; with event-triggered exchange it starts both caches afresh."""
        self.sent_cache, self.others_cache = PosteriorCache(), PosteriorCache()

    @classmethod
    def from_state(cls, s: dict) -> Link:
        return cls(int(s["n"]), s["local_of"].numpy().copy(),
                   PlanArgs.from_dict(dict(s["plan_args"])), bool(s["float16"]),
                   _holders(s), s["delta_tol"], str(s.get("checked", "")),
                   PosteriorCache.from_state(s["sent_cache"]),
                   PosteriorCache.from_state(s["others_cache"]))


def _holders(s: dict) -> dict[str, list[str]]:
    if "holders" not in s:  # a state from before holders were kept: names only
        return {str(m): [] for m in s["shared"]}
    return {str(m): [str(h) for h in hs] for m, hs in s["holders"].items()}
