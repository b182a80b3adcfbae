"""A site's state file that cannot be read when a process picks the site up
(:class:`mmvm.federation.site_store.SiteStore`): damaged bytes give way to the newest
readable snapshot (plaintext sites only), a passing read error never does."""

from __future__ import annotations

import pytest
import torch

from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.settings import settings_for
from mmvm.federation.site import Site
from mmvm.federation.site_store import SiteStore
from tests.support.federate import make_sites, split

pytestmark = pytest.mark.epochs(2)  # six one-step windows (conftest.py's cfg)


def _stored_run(cfg, tmp_path, tiny_polymnist):
    """A finished 6-window run whose sites wrote after every message: one site, the
    state folder, its live file."""
    sites, folder = make_sites(cfg, *split(tiny_polymnist, tmp_path, "hybrid")), \
        tmp_path / "state"
    stored = {k: Endpoint(s, PlainChannel(), store=SiteStore(folder / f"{s.name}.pt"),
                          resident=False) for k, s in sites.items()}  # writes every message
    run_federation(LocalTransport(stored), settings_for(
        cfg, exchange="step", float16=False, checkpoint_every=3))
    site = next(iter(sites.values()))
    return site, folder, folder / f"{site.name}.pt"


def test_a_state_that_cannot_be_read_for_a_while_is_not_given_up(cfg, tmp_path,
                                                                 tiny_polymnist,
                                                                 monkeypatch):
    """A permission, a busy NFS server, CUDA out of memory while loading: the file is
    whole, and going back to a snapshot (then deleting it) lost training for good."""
    site, folder, live = _stored_run(cfg, tmp_path, tiny_polymnist)
    before = live.read_bytes()
    for err in (OSError(13, "Permission denied"), RuntimeError("CUDA out of memory")):
        def failing(self, path, err=err):
            raise err

        monkeypatch.setattr(Site, "restore", failing)
        with pytest.raises(type(err), match=str(err.args[-1])):
            SiteStore(live).refresh(Site(cfg, site.name, site.train_path))
        monkeypatch.undo()
    assert live.read_bytes() == before and not list(folder.glob("*.damaged-*"))


def test_a_damaged_live_state_gives_way_to_the_newest_readable_snapshot(
        cfg, tmp_path, tiny_polymnist):
    """A truncated live file ended the resume with PytorchStreamReader's words and no
    file named; the snapshot of the last checkpoint is a hard link to it, damaged with
    it, and an older one was intact. Now the newest readable snapshot becomes the
    live state (the site is behind: the resumed server restarts it from there)."""
    from mmvm.federation.site_store import StateFileError

    site, folder, live = _stored_run(cfg, tmp_path, tiny_polymnist)
    assert SiteStore(live).snapshots() == [2, 5]
    from tests.support.damage import flip_tensor_bytes

    # the live file and window 6's: a tensor's bytes changed, loaded without a word
    # by torch (NaN at the next step, the site failing every window)
    for f in (live, folder / f"{site.name}.w5.pt"):
        flip_tensor_bytes(f)
    damaged = live.read_bytes()
    with pytest.raises(StateFileError, match=r"cannot be read .* and a secure site "
                                             r"never goes back to a snapshot") as crc:
        SiteStore(live, fall_back=False).refresh(Site(cfg, site.name, site.train_path))
    # the CRC failure quoted the file's path, and a secure site sends this text: the
    # server learns the file within the state folder only (a review of 2026-12-07)
    said = str(crc.value)
    assert "fails its CRC check" in said and str(folder.parent) not in said, said
    assert f"{folder.name}/{site.name}.pt" in said
    store, fresh = SiteStore(live), Site(cfg, site.name, site.train_path, site.test_path)
    store.refresh(fresh)
    assert fresh.progress.window == 2 and live.stat().st_nlink == 1  # not w3's inode
    assert "unreadable" in store.notes[0] and "snapshot of window 3" in store.notes[0]
    (kept,) = folder.glob(f"{site.name}.pt.damaged-*")  # set aside, not deleted
    assert kept.read_bytes() == damaged
    again = Site(cfg, site.name, site.train_path, site.test_path)
    SiteStore(live).refresh(again)  # the live file is whole again
    assert again.progress.window == 2
    live.unlink()  # removed by hand: the snapshot is found all the same
    SiteStore(live).refresh(again := Site(cfg, site.name, site.train_path))
    assert again.progress.window == 2
    for f in (live, *(folder / f"{site.name}.w{w}.pt" for w in (2, 5))):
        f.write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(StateFileError, match=rf"site {site.name}: its saved state "
                       rf"{folder.name}/{site.name}\.pt \(in its state folder: the server "
                       rf"learns no path\) cannot be read .* nor can any snapshot of it "
                       rf"\(\[3, 6\]\)") as unread:
        SiteStore(live).refresh(Site(cfg, site.name, site.train_path))
    assert str(folder.parent) not in str(unread.value)  # a secure site sends this text


def test_a_sites_state_records_what_computed_its_part(cfg, tmp_path, tiny_polymnist):
    """What computed a site's part of a run is on its own disk (mmvm.provenance), for
    its operator: the server's results.json records only the server's."""
    _, _, live = _stored_run(cfg, tmp_path, tiny_polymnist)
    env = torch.load(live, weights_only=True)["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads() == 1
