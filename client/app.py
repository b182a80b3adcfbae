"""The site: a Flower ClientApp over ``mmvm.federation`` (no training logic here).

Each handler answers in this process (``client/site_node.py``: the site, its policy,
its state on disk) or, in a simulation, through the site's host, a process that
keeps the site in memory for the run (``client/hosts.py``). A failure the site can
explain reaches the server as an error reply of one line.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

app = ClientApp()


def _answer(msg: Message, context: Context, kind: str) -> Message:
    rc = context.run_config  # checked in full where the site answers
    if _hosted(context):
        from client.hosts import forward

        try:
            sites = int(rc.get("num-sites", 1))
        except (TypeError, ValueError):
            sites = 1
        reply = forward(kind, msg.content, context, sites)
    else:
        from client.site_node import answer  # torch & co.: not in a forwarding actor

        reply = answer(kind, msg.content, context)
    if isinstance(reply, str):
        return _error(msg, reply)
    return Message(reply, reply_to=msg)


def _hosted(context: Context) -> bool:
    """Whether a site host answers (``client.hosts``): only a simulation's node config
    has a partition id, so a deployment's ClientApp never imports Ray (0.1-0.2 s of
    CPU per message, in a process that answers one message)."""
    if "partition-id" not in context.node_config:
        return False
    from client.hosts import hosted
    from mmvm.federation.booleans import as_bool

    return hosted(context, as_bool(context.run_config.get("site-hosts", True)) is not False)


def _error(msg: Message, text: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=text),
                   reply_to=msg)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "describe")


@app.train("align")
def align(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "align")


@app.train("attach")
def attach(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "attach")


@app.train("window")
def window(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "window")


@app.train("confirm")
def confirm(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "confirm")


@app.train("unmask")
def unmask(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "unmask")


@app.query("resume")
def resume(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "resume")


@app.query("heldout")
def held_out(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "heldout")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "evaluate")
