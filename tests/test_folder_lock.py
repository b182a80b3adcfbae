"""folder_lock: one process at a time writes a folder, and a folder made for a run
that wrote nothing is not left behind (a flaky-lab walkthrough found empty
run-<id>/ folders after every failed run)."""

from __future__ import annotations

import threading
import time

import pytest

from mmvm.folder_lock import folder_lock


def test_a_folder_made_for_nothing_is_removed_and_one_written_to_stays(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "run-1", "a run"):
        raise RuntimeError("the run failed before writing anything")
    assert not (tmp_path / "run-1").exists()
    with folder_lock(tmp_path / "run-2", "a run"):
        (tmp_path / "run-2" / "state.pt").write_bytes(b"x")
    assert (tmp_path / "run-2" / "state.pt").exists()
    (tmp_path / "run-3").mkdir()  # there before: never removed, empty or not
    with folder_lock(tmp_path / "run-3", "a run"):
        pass
    assert (tmp_path / "run-3").is_dir()


def test_a_waiter_locks_the_folder_made_anew_after_its_maker_removed_it(tmp_path):
    """The first holder made the folder and wrote nothing, so it removes it on its way
    out; the second, which waited on the removed folder's descriptor, must hold the
    folder that is there now, not a deleted one."""
    folder, held = tmp_path / "run-9", threading.Event()

    def first():
        with folder_lock(folder, "the first"):
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with folder_lock(folder, "the second", wait=5.0):
        assert folder.is_dir()
        (folder / "written").write_text("by the second")
    t.join()
    assert (folder / "written").read_text() == "by the second"
