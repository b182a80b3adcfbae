"""Where plaintext and secure mode differ on the server: the routing seam.

The round loop (:mod:`mmvm.federation.loop`) is written once; a :class:`Routing`
decides how sites are aligned, what it keeps from the sites' replies, how the next
window's requests are built from them and how shared weights are averaged.

- :class:`PlainRouting`: aligns sample ids, reads the posterior tables, forwards each
  site the other modalities' rows of its window, averages weights (FedAvg).
- :class:`EventTriggeredRouting`: plaintext with a cache: forwards only rows that
  changed since it last sent them to that site (``delta-tol``).
- :class:`~mmvm.federation.sealed_routing.SealedRouting`: pseudonyms, envelopes it
  cannot open, masked weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from mmvm.data.store_format import MAX_ID_CHARS
from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.delta import PosteriorCache
from mmvm.federation.messages import SERVER, Arrays, DescribeReply, WindowRequest
from mmvm.federation.posteriors import (
    PosteriorError,
    Posteriors,
    decode_table,
    encode_table,
    merge_tables,
    table_from_state,
    table_state,
)
from mmvm.secure.keys import validate_site_name


class Routing(Protocol):
    peers: bool  # attach requests carry each site's peers (rows shared with each)
    failed: dict[str, str]  # sites that failed the last aggregate's own round, and why
    unaveraged: dict[str, str]  # modalities the last aggregate could not average, why

    def align(self, transport, described: Mapping[str, DescribeReply]) -> list[SiteInfo]:
        ...

    def screen(self, coord: Coordinator, replies: Mapping, index: int) -> dict[str, str]:
        """Window replies whose weights (or envelopes) the server refuses, by site key
        with the reason; keeps nothing."""
        ...

    def receive(self, coord: Coordinator, replies: Mapping) -> dict[str, str]:
        """Keep what the next window needs from attach or window replies; returns the
        sites whose posteriors were refused (nothing of theirs is kept), with why."""
        ...

    def requests(self, coord: Coordinator, index: int, averaged: Arrays
                 ) -> dict[str, WindowRequest]:
        ...

    def aggregate(self, transport, coord: Coordinator, index: int, replies: Mapping
                  ) -> Arrays:
        """The averaged weights of each shared modality after window ``index``
        (secure mode asks the sites for one more round: unmask). Only the sites in
        ``replies`` answered, and :meth:`screen` passed their replies; a modality none
        of them sent is left out."""
        ...

    def missed(self, key: str) -> None:
        """Site ``key`` did not answer the last window."""
        ...

    def state(self) -> dict:
        """What the next window's requests are built from (the server's checkpoint)."""
        ...

    def authenticate(self, state: dict, run: str, challenges: Mapping[str, str],
                     replies: Mapping, asker: str) -> dict[str, str]:
        """Resume: the answers (by node key) whose sender does not prove to be the site
        it names, answering in Flower run ``asker``, with why; ``state``: the saved
        run's :meth:`state`."""
        ...

    def load(self, state: dict) -> None:
        ...

    def resumed(self, replies: Mapping) -> None:
        """Resume: what the sites' answers (by node key, rekeyed) say the routing
        must keep of the window they were in (secure mode: committed unmask views)."""
        ...


def check_described(described: Mapping[str, DescribeReply], max_rows: int,
                    modalities: Sequence[str] = ()) -> None:
    """Each site's description within what the server takes (``max-site-rows``), a
    valid site name and sample ids of 1 to ``MAX_ID_CHARS`` characters, and every
    one of the experiment's ``modalities`` held by some site: checked before
    alignment builds sets, rows and plans of them (and before a PSI runs)."""
    held = {m for d in described.values() for m in d.modalities}
    missing = [m for m in modalities if m not in held]
    if missing:
        raise FederationError(
            f"no connected site holds modalities {missing} of the experiment; the sites "
            f"hold: " + "; ".join(f"{d.site} {', '.join(d.modalities) or 'none'}"
                                  for d in sorted(described.values(), key=lambda d: d.site))
            + " (a site's data folder of another modality?)")
    for key, d in described.items():
        try:
            validate_site_name(d.site)
        except ValueError as err:
            raise FederationError(f"the SuperNode {key} describes itself as {err}") from None
        if not 1 <= d.n <= max_rows or len(d.identifiers) > max_rows:
            raise FederationError(
                f"site {d.site}: describes {d.n} samples ({len(d.identifiers)} ids); the "
                f"server takes 1 to max-site-rows = {max_rows} per site")
        bad = next((i for i in d.identifiers if not 1 <= len(i) <= MAX_ID_CHARS), None)
        if bad is not None:
            raise FederationError(f"site {d.site}: a sample id of {len(bad)} characters "
                                  f"(ids have 1 to {MAX_ID_CHARS})")


def check_counts(described: Mapping[str, DescribeReply], got: Mapping[str, list[str]]
                 ) -> None:
    for key, d in described.items():
        ids = got[key]
        if len(ids) != d.n or len(set(ids)) != len(ids):
            raise FederationError(f"site {d.site}: {len(ids)} identifiers "
                                  f"({len(set(ids))} distinct) for {d.n} samples")


def site_infos(described: Mapping[str, DescribeReply], identifiers: Mapping[str, list[str]]
               ) -> list[SiteInfo]:
    check_counts(described, identifiers)
    return [SiteInfo(key, d.site, list(d.modalities), list(identifiers[key]))
            for key, d in described.items()]


class PlainRouting:
    """Sample ids and posterior tables in the clear."""

    peers = False

    @property
    def failed(self) -> dict[str, str]:
        """FedAvg asks the sites nothing more: nobody fails it."""
        return {}

    @property
    def unaveraged(self) -> dict[str, str]:
        """Screened weights always average."""
        return {}

    def __init__(self, latent_dim: int, float16: bool) -> None:
        self.latent_dim, self.float16 = latent_dim, float16
        self.table: dict[str, Posteriors] = {}
        # the window whose rows the next replies carry (attach: 0; window w: w + 1):
        # a site's rows of it are the frame its table's implied rows stand for
        self.carries = 0

    @staticmethod
    def frame(coord: Coordinator, key: str, index: int) -> np.ndarray:
        """Rows of window ``index`` site ``key`` holds (what both sides derive)."""
        return coord.held_of(key, coord.window_rows(index))

    def _base(self):
        """The receiver's values increments are added to (none: no increments)."""
        return None

    def align(self, transport, described: Mapping[str, DescribeReply]) -> list[SiteInfo]:
        return site_infos(described, {k: d.identifiers for k, d in described.items()})

    def screen(self, coord: Coordinator, replies: Mapping, index: int) -> dict[str, str]:
        refused = {}
        for key, rep in replies.items():
            try:
                wrong = set(rep.weights) - {m for m, hs in coord.shared.items()
                                            if key in hs}
                if wrong:
                    raise FederationError(f"site {coord.name(key)} sent weights of "
                                          f"{sorted(wrong)}, which it does not share")
                for m, arrays in rep.weights.items():
                    coord.check_weights(key, m, arrays)
            except FederationError as err:
                refused[key] = str(err)
        return refused

    def receive(self, coord: Coordinator, replies: Mapping) -> dict[str, str]:
        tables, refused = [], {}
        for key, rep in replies.items():
            try:
                tables.append(self._read(coord, key, rep))
            except (FederationError, PosteriorError) as err:
                refused[key] = str(err)
        self.table = merge_tables(tables)
        return refused

    def _read(self, coord: Coordinator, key: str, rep) -> dict[str, Posteriors]:
        """Site ``key``'s posterior table, checked against what it holds."""
        site = coord.sites[key]
        stray = set(rep.posteriors) - {SERVER}
        if stray:
            raise FederationError(f"site {site.name} addressed posteriors to "
                                  f"{sorted(stray)} in plaintext mode")
        t = decode_table(rep.posteriors.get(SERVER, b""), latent_dim=self.latent_dim,
                         n_rows=coord.n, sender=site.name, max_rows=len(site.held),
                         frame=self.frame(coord, key, self.carries), base=self._base())
        foreign = set(t) - set(site.modalities)
        if foreign:
            raise FederationError(f"site {site.name} sent posteriors for modalities "
                                  f"{sorted(foreign)} it does not hold")
        for m, p in t.items():
            stray_rows = p.rows[~coord.holds(key, p.rows)]  # decode_table: rows < n
            if len(stray_rows):
                raise FederationError(f"site {site.name} sent posteriors for row "
                                      f"{int(stray_rows[0])} of {m!r}, which it does "
                                      f"not hold")
        return t

    def _table(self, coord: Coordinator, index: int) -> dict[str, Posteriors]:
        return self.table

    def _forward(self, key: str, others: dict[str, Posteriors], int8: bool
                 ) -> tuple[dict[str, Posteriors], dict[str, Posteriors] | None]:
        """What goes to site ``key``: values, and increments on its own values."""
        return others, None

    def requests(self, coord: Coordinator, index: int, averaged: Arrays
                 ) -> dict[str, WindowRequest]:
        out, int8 = {}, coord.plan_args.quantize == "int8"
        self.carries = index + 1
        for key, others in coord.route(index, self._table(coord, index)).items():
            values, deltas = self._forward(key, others, int8)
            blob = encode_table(values, self.float16, int8=int8, deltas=deltas,
                                frame=self.frame(coord, key, index))
            out[key] = WindowRequest(window=index, posteriors={SERVER: blob} if blob else {},
                                     weights=coord.weights_for(key, averaged))
        return out

    def aggregate(self, transport, coord: Coordinator, index: int, replies: Mapping
                  ) -> Arrays:
        return coord.fedavg({key: rep.weights for key, rep in replies.items()},
                            screened=True)  # the round loop's admission did

    def missed(self, key: str) -> None:
        """Nothing to forget: the next window's table holds only this window's replies."""

    def state(self) -> dict:
        return {"table": table_state(self.table)}

    def authenticate(self, state: dict, run: str, challenges: Mapping[str, str],
                     replies: Mapping, asker: str) -> dict[str, str]:
        return {}  # a plaintext site has no key: its node id and its word

    def resumed(self, replies: Mapping) -> None:
        """Nothing a plaintext site commits to outlives its cached replies."""

    def load(self, state: dict) -> None:
        self.table = table_from_state(state["table"])


class EventTriggeredRouting(PlainRouting):
    """Plaintext, but the server keeps the latest rows and forwards only news:
    a row goes to a site again only when it changed since it last went there. With
    int8, what goes is the increment from what the site holds (``held``, its exact
    reconstruction) to the server's value: what quantization missed goes with the
    row's next change (error feedback)."""

    def __init__(self, latent_dim: int, float16: bool) -> None:
        super().__init__(latent_dim, float16)
        self.cache = PosteriorCache()
        self.forwarded: dict[str, PosteriorCache] = {}
        self.held: dict[str, PosteriorCache] = {}

    def _base(self):
        return self.cache.values

    def receive(self, coord: Coordinator, replies: Mapping) -> dict[str, str]:
        refused = super().receive(coord, replies)
        self.cache.update(self.table)
        return refused

    def _table(self, coord: Coordinator, index: int) -> dict[str, Posteriors]:
        return self.cache.table(coord.window_rows(index))

    def _forward(self, key: str, others: dict[str, Posteriors], int8: bool
                 ) -> tuple[dict[str, Posteriors], dict[str, Posteriors] | None]:
        news = self.forwarded.setdefault(key, PosteriorCache()).changed(others, 0.0)
        if not int8:
            return news, None
        return self.held.setdefault(key, PosteriorCache()).changed_int8(news, -1.0)

    def missed(self, key: str) -> None:
        """What went to ``key`` may never have arrived: send it everything again (it
        is told to ``resync``). Its own last rows stay in the cache, stale, as rows
        within the tolerance do: event-triggered exchange trades exactness for bytes."""
        self.forwarded.pop(key, None)
        self.held.pop(key, None)

    def state(self) -> dict:
        return {**super().state(), "cache": self.cache.state(),
                "forwarded": {k: c.state() for k, c in self.forwarded.items()},
                "held": {k: c.state() for k, c in self.held.items()}}

    def load(self, state: dict) -> None:
        super().load(state)
        self.cache = PosteriorCache.from_state(state["cache"])
        self.forwarded = {k: PosteriorCache.from_state(c)
                          for k, c in state["forwarded"].items()}
        self.held = {k: PosteriorCache.from_state(c) for k, c in state.get("held", {}).items()}
