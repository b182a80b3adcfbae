"""Exceptions raised when a security check fails.

Every failure is a subclass of :class:`SecurityError`, so a caller can catch all
of them in one place, while tests (and logs) tell apart *what* went wrong. On
failure nothing is returned: no partially decrypted bytes, no unverified data.
"""

from __future__ import annotations


class SecurityError(Exception):
    """Base class: a security check failed; the input must not be used."""


class InvalidSignatureError(SecurityError, ValueError):
    """An Ed25519 signature (e.g. a directory entry's self-signature) is bad."""


class MalformedEnvelopeError(SecurityError, ValueError):
    """The bytes are not an envelope of a known version (truncated, bad magic)."""


class WrongRecipientError(SecurityError):
    """The envelope is addressed to another site (mis-routed by the server)."""


class UnexpectedSenderError(SecurityError):
    """The envelope claims a sender other than the one the caller expects."""


class ContextMismatchError(SecurityError):
    """The envelope belongs to another run, or is of another kind than expected."""


class TamperedEnvelopeError(SecurityError):
    """Authentication failed: ciphertext or header altered, or keys don't match."""


class ReplayError(SecurityError):
    """A (round, counter) already accepted, or older than what was accepted."""


class MaskingError(SecurityError, ValueError):
    """Secure aggregation cannot be completed safely (missing seeds, overflow)."""


class PeerContentError(SecurityError):
    """A peer's envelope authenticated, but what it holds is not what the protocol
    says it must (rows or modalities the peer may not send, values that do not
    decode). The sender is named: the recipient refuses it, and is not to blame."""
