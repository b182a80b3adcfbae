"""The server's checkpoint: a faithful round trip, and kill -9 mid-write keeps the last.

Site state (``Site.save``) and server state (``save_server_state``) are both written
by :func:`mmvm.atomic.atomic_write` (a temporary file, fsync, rename). Here a child
process rewrites a 16 MB checkpoint in a loop and is killed with SIGKILL at random
moments: every time, what is on disk loads and is one whole version.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from mmvm.config import ConfigError
from mmvm.federation.coordinator import SiteInfo
from mmvm.federation.server_state import (
    ServerState,
    load_server_state,
    save_server_state,
)
from mmvm.federation.settings import settings_for


@pytest.fixture
def settings(tiny_polymnist, tiny_config):
    return settings_for(tiny_config(tiny_polymnist), resume="1")


def test_round_trip(settings, tmp_path):
    rng = np.random.default_rng(0)
    averaged = {"m0": {"encoders.m0.w": rng.normal(size=(3, 4)).astype(np.float32)}}
    sites = [SiteInfo("11", "a", ["m0"], ["x", "y"]), SiteInfo("12", "b", ["m1"], ["y"])]
    routing = {"inbox": {"11": {"b": b"\x00sealed"}}}
    state = ServerState(4, sites, averaged, routing, {"b": [2, 3]}, ["12"],
                        [{"window": 0, "rec_nll": 1.5}], 1234, 5.5, {"samples": 2})
    save_server_state(tmp_path / "s.pt", settings, state)
    back = load_server_state(tmp_path / "s.pt", settings)
    assert back.window == 4 and back.missed == {"b": [2, 3]} and back.absent == ["12"]
    assert [(i.key, i.name, i.modalities, i.identifiers) for i in back.sites] == \
        [("11", "a", ["m0"], ["x", "y"]), ("12", "b", ["m1"], ["y"])]
    np.testing.assert_array_equal(back.averaged["m0"]["encoders.m0.w"],
                                  averaged["m0"]["encoders.m0.w"])
    assert back.routing == routing and back.history == state.history
    assert (back.bytes_total, back.seconds, back.alignment) == (1234, 5.5, {"samples": 2})


def test_a_damaged_server_state_is_refused_with_its_path(settings, tmp_path):
    """Truncated, not a torch file, another object, or keys missing: a ConfigError
    naming the file, never a traceback from torch's unpickler."""
    state = ServerState(0, [SiteInfo("11", "a", ["m0"], ["x"])], {}, {}, {}, [], [], 0,
                        0.0, {})
    good = tmp_path / "good.pt"
    save_server_state(good, settings, state)
    data = good.read_bytes()
    from tests.support.damage import flip_tensor_bytes

    flipped = tmp_path / "flipped.pt"  # a tensor's bytes changed: finite garbage
    flipped.write_bytes(data)
    flip_tensor_bytes(flipped)
    with pytest.raises(ConfigError, match=r"flipped.pt is not a readable server state "
                                          r"\(DamagedFile: .*fails its CRC check"):
        load_server_state(flipped, settings)
    cases = {"cut.pt": data[: len(data) // 2], "text.pt": b"not a checkpoint"}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ConfigError, match=f"{name} is not a readable server state"):
            load_server_state(tmp_path / name, settings)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a server state"):
        load_server_state(tmp_path / "list.pt", settings)
    doc = torch.load(good, weights_only=True)
    del doc["sites"]
    torch.save(doc, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="partial.pt: server state incomplete"):
        load_server_state(tmp_path / "partial.pt", settings)


WRITER = textwrap.dedent("""
    import sys, torch
    from mmvm.atomic import atomic_write
    path, version = sys.argv[1], 0
    while True:
        version += 1
        doc = {"version": version, "data": torch.full((4_000_000,), float(version))}
        atomic_write(path, lambda fh: torch.save(doc, fh))
""")


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path):
    path, rng = tmp_path / "state.pt", random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))  # somewhere inside a write, most likely
        child.send_signal(signal.SIGKILL)
        child.wait()
        doc = torch.load(path, weights_only=True)
        assert bool((doc["data"] == float(doc["version"])).all())
