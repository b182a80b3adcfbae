"""What a site does with the server's mean of the weights it shares: check it
completely, then load it (but for what its channel does not take yet)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mmvm.federation.channel import Channel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import Arrays, model_arrays
from mmvm.federation.site import Site


def checked_mean(site: Site, channel: Channel, received: Mapping,
                 keys: Mapping[str, bytes] | None = None) -> Arrays:
    """Averaged weights only for the modalities ``site`` shares, each of its shapes
    and finite, and (secure) the holders' mean: returned without the sketches that
    prove it (``keys``, a window's: the co-holders' sketch keys, opened where new)."""
    weights = {m: model_arrays(a) for m, a in received.items()}
    stray = set(weights) - set(site.linked().shared)
    if stray:
        raise FederationError(f"site {site.name}: weights for {sorted(stray)}, which it "
                              f"does not share with other sites")
    for m, arrays in weights.items():
        site.check_weights(m, arrays)
    channel.check_mean(site, received, keys)
    return weights


def load_mean(site: Site, channel: Channel, weights: Mapping, what: str,
              note: Callable[[str], None]) -> list[str]:
    """Weights :func:`checked_mean` passed, loaded, but for those the channel does
    not take yet (secure: a group no co-holder has confirmed): returned, and said in
    the site's own log (``note``)."""
    kept = channel.unconfirmed(weights)
    for m, arrays in weights.items():
        if m not in kept:
            site.load_weights(m, arrays, checked=True)
    if kept:
        note(f"{what}: kept its own weights of {', '.join(map(repr, kept))}, not the "
             f"server's mean: no other holder has confirmed sharing it yet (a co-holder's "
             f"sealed share envelope names the group at an unmask; only the server says "
             f"the modality is shared)")
    return kept


def unaveraged(site: Site, channel: Channel, means: Mapping, collect: bool,
               note: Callable[[str], None]) -> list[str]:
    """Secure, where the server ``collect``s the model: the shared modalities of which
    the evaluation brought no mean, said in the site's log (``note``): the site hands
    in no weights of them. Handing in its own would show the server what the masking
    hides (a server that sent no mean got one holder's weights in clear: a review)."""
    if not (channel.secure and collect):
        return []
    alone = sorted(m for m in site.linked().shared if m not in means)
    if alone:
        note(f"the evaluation: hands in no weights of {', '.join(map(repr, alone))}: the "
             f"server sent no mean of {'it' if len(alone) == 1 else 'them'}, and a secure "
             f"site shows the server only the mean of a modality it shares")
    return alone
