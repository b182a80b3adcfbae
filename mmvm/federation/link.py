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
    hold the sample); ``shared`` are own modalities other sites also hold (FedAvg)."""

    n: int
    local_of: np.ndarray
    plan_args: PlanArgs
    float16: bool = False
    shared: list[str] = field(default_factory=list)
    delta_tol: float | None = None  # event-triggered exchange (delta.py)
    sent_cache: PosteriorCache = field(default_factory=PosteriorCache)
    others_cache: PosteriorCache = field(default_factory=PosteriorCache)
    plan: Plan = field(init=False)  # made from plan_args: windows on demand

    def __post_init__(self) -> None:
        self.plan = self.plan_args.plan(self.n)

    def state(self) -> dict:
        return {"n": self.n, "local_of": torch.from_numpy(self.local_of),
                "plan_args": self.plan_args.to_dict(), "float16": self.float16,
                "shared": list(self.shared), "delta_tol": self.delta_tol,
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
                   list(s["shared"]), s["delta_tol"],
                   PosteriorCache.from_state(s["sent_cache"]),
                   PosteriorCache.from_state(s["others_cache"]))
