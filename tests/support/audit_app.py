"""A test-only ServerApp: the product's ``main`` over a Grid that records and tampers.

Never shipped: the deployment test copies the app into a temporary folder whose
``pyproject.toml`` names this module as the ServerApp and adds two run-config keys:

- ``test-dump-messages``: a path; every message content the ServerApp sends or
  receives is appended there in Flower's wire encoding (protobuf), to check what
  the server handled;
- ``test-tamper-window``: in that window, flip the last byte of one envelope routed
  to the site with the smallest node id (the recipient must refuse it);
- ``test-spoil-window``: in that window, the reply of the site with the smallest node
  id reports a NaN loss, as a site whose training diverged would (the server must
  refuse that reply and go on without the site for the window).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from flwr.app import Context
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import Grid, ServerApp

from server.app import main as product_main
from wire.records import reply_from_record

app = ServerApp()


def append_dump(path: str | Path, stage: str, direction: str, node: str, content) -> None:
    head = json.dumps({"stage": stage, "dir": direction, "node": node}).encode()
    body = recorddict_to_proto(content).SerializeToString()
    with open(path, "ab") as fh:
        fh.write(struct.pack(">II", len(head), len(body)) + head + body)


def read_dump(path: str | Path) -> list[tuple[dict, bytes]]:
    """Records of :func:`append_dump`: (header, protobuf bytes)."""
    data, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        nh, nb = struct.unpack_from(">II", data, pos)
        pos += 8
        head = json.loads(data[pos:pos + nh])
        pos += nh
        out.append((head, data[pos:pos + nb]))
        pos += nb
    return out


def blobs_in(body: bytes) -> list[bytes]:
    """Every bytes value of the ``blobs/...`` records of one recorded message that
    carry envelopes: not ``blobs/peer_rows``, the rows the server itself computed (in
    the clear, as the attach request's other rows)."""
    proto = ProtoRecordDict()
    proto.ParseFromString(body)
    rd, out = recorddict_from_proto(proto), []
    for name in rd.keys():
        if name.startswith("blobs/") and name != "blobs/peer_rows":
            out += [b for b in rd[name].values() if isinstance(b, bytes)]
    return out


def make_app(dest: Path) -> Path:
    """A copy of this app at ``dest`` whose ServerApp is this module's, with the
    test-only run-config keys; the product's pyproject.toml has none of them."""
    root = Path(__file__).resolve().parents[2]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("mmvm", "server", "client", "wire", "configs"):
        shutil.copytree(root / d, dest / d, ignore=skip)
    (dest / "tests" / "support").mkdir(parents=True)
    (dest / "tests" / "__init__.py").write_text("")
    for f in ("__init__.py", "audit_app.py"):
        shutil.copy(root / "tests" / "support" / f, dest / "tests" / "support" / f)
    shutil.copy(root / "README.md", dest / "README.md")
    text = (root / "pyproject.toml").read_text()
    assert 'serverapp = "server.app:app"' in text
    text = text.replace('serverapp = "server.app:app"',
                        'serverapp = "tests.support.audit_app:app"')
    text = text.replace("[tool.flwr.app.config]\n", "[tool.flwr.app.config]\n"
                        'test-dump-messages = ""\ntest-tamper-window = -1\n'
                        'test-spoil-window = -1\n')
    (dest / "pyproject.toml").write_text(text)
    (dest / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    return dest


class AuditGrid:
    """A Grid that logs every message content and may corrupt one envelope."""

    def __init__(self, grid: Grid, dump: str, tamper_window: int, spoil_window: int = -1
                 ) -> None:
        self.grid, self.dump, self.tamper_window = grid, dump, tamper_window
        self.spoil_window = spoil_window
        self.names: dict[int, str] = {}

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.group_id == f"window {self.tamper_window}":
                self._tamper(messages)
                break
        for m in messages:
            self._log(m.metadata.group_id, "sent", m.metadata.dst_node_id, m.content)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(self.grid.pull_messages(message_ids))
        for r in replies:
            if not r.has_content():
                continue
            self._log(r.metadata.group_id, "received", r.metadata.src_node_id, r.content)
            if r.metadata.message_type == "query.describe":
                self.names[r.metadata.src_node_id] = reply_from_record("describe",
                                                                       r.content).site
        spoil = [r for r in replies if r.has_content()
                 and r.metadata.group_id == f"window {self.spoil_window}"]
        if spoil:
            self._spoil(min(spoil, key=lambda r: r.metadata.src_node_id))
        return replies

    def _spoil(self, reply) -> None:
        body = reply.content["body"]
        metrics = json.loads(body["metrics"])
        metrics["rec_nll"] = float("nan")
        body["metrics"] = json.dumps(metrics)
        self.spoil_window = -1  # once
        print(f"mmvm: TEST spoil: {self.names.get(reply.metadata.src_node_id)}'s reply "
              f"to {reply.metadata.group_id} reports a NaN loss", flush=True)

    def _log(self, stage: str, direction: str, node: int, content) -> None:
        if self.dump:
            append_dump(self.dump, stage, direction, str(node), content)

    def _tamper(self, messages) -> None:
        target = min((m for m in messages if "blobs/posteriors" in m.content.keys()),
                     key=lambda m: m.metadata.dst_node_id)
        blobs = target.content["blobs/posteriors"]
        sender = min(blobs.keys())
        blob = bytearray(blobs[sender])
        blob[-1] ^= 0x01
        blobs[sender] = bytes(blob)
        print(f"mmvm: TEST tamper: flipped a byte of {sender}'s envelope to "
              f"{self.names.get(target.metadata.dst_node_id)} in "
              f"{target.metadata.group_id}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    product_main(AuditGrid(grid, str(rc.get("test-dump-messages", "")),
                           int(rc.get("test-tamper-window", -1)),
                           int(rc.get("test-spoil-window", -1))), context)
