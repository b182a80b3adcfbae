"""Security layer between sites: keys, end-to-end envelopes, masking, private alignment.

* :mod:`mmvm.secure.keys`: site identities (X25519 + Ed25519) and pairwise keys;
* :mod:`mmvm.secure.envelope`: authenticated encryption site -> site via the server;
* :mod:`mmvm.secure.masking`: secure aggregation of shared weights (pairwise masks,
  self-masks); :mod:`mmvm.secure.unmasking`: the unmask step's rules (Shamir shares);
* :mod:`mmvm.secure.psi`: private id alignment of several sites (commutative ECDH ring);
* :mod:`mmvm.secure.session`: a site's keys, directory and secure state for one run;
* :mod:`mmvm.secure.errors`: ``SecurityError`` and its subclasses.

No module here imports flwr: the ServerApp/ClientApp call these functions and
carry their bytes/arrays in Flower messages.
"""

from mmvm.secure.envelope import ReplayGuard, open_envelope, seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import (
    SiteKeys,
    SitePublicKeys,
    load_public_directory,
    save_public_directory,
)
from mmvm.secure.masking import FixedPoint, aggregate_masked, mask_update

__all__ = [
    "FixedPoint",
    "ReplayGuard",
    "SecurityError",
    "SiteKeys",
    "SitePublicKeys",
    "aggregate_masked",
    "load_public_directory",
    "mask_update",
    "open_envelope",
    "save_public_directory",
    "seal",
]
