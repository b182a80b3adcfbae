"""One reading of a yes/no setting, for the run config, a node config and the
ClientApp's routing alike (they disagreed on ``on``/``off``)."""

from __future__ import annotations

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def as_bool(value: object) -> bool | None:
    """``value`` as a boolean (a TOML boolean, or one of :data:`TRUE` / :data:`FALSE`
    in any case), or None where it is neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in TRUE else False if text in FALSE else None
