"""What a failing secure site tells the server, a malicious one included: an error code,
never its data, in a log that cannot fill the site's disk (``site_errors.public_error``).
Attacks on the protocol itself are in test_attacks.py."""

from __future__ import annotations

from mmvm.data.store import DataError
from mmvm.federation.site_errors import public_error
from mmvm.secure.errors import SecurityError


def test_4_errors_reach_the_server_without_data(tmp_path):
    """A data error names files and sample ids: the server gets only its class."""
    log = tmp_path / "site.errors.log"
    err = DataError("/hospital/frontal/train.parquet: column 'frontal', row 7 "
                    "(id 'MRN-0012345'): NaN in a float tensor")
    public = str(public_error("site-a", log, "window", err))
    assert "MRN-0012345" not in public and "/hospital" not in public
    assert public.startswith("DataError in window at site site-a")
    assert "MRN-0012345" in log.read_text()  # the site keeps the details
    protocol = str(public_error("site-a", log, "window", SecurityError("bad envelope")))
    assert protocol == "SecurityError: bad envelope"


def test_4c_refused_messages_cannot_fill_the_sites_disk(tmp_path, monkeypatch):
    """Every failed message appends its traceback to the site's error log; a server
    that keeps sending what the site refuses gets at most two logs' worth of disk,
    and the last error is always in the current one."""
    from mmvm.federation import site_errors

    monkeypatch.setattr(site_errors, "LOG_BYTES", 2000)
    log = tmp_path / "site-a.errors.log"
    for i in range(200):
        public_error("site-a", log, "window", SecurityError(f"refused message {i}"))
    older = log.with_name(log.name + ".1")
    assert log.stat().st_size < 2000 + 1000 and older.stat().st_size < 2000 + 1000
    assert "refused message 199" in log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.name, older.name]


def test_4b_a_state_folder_that_cannot_be_made_still_reaches_the_server_as_a_code(
        tmp_path, capsys):
    """state="/proc/mmvm" or a path through a file: the site's log cannot be
    written either; the details go to its SuperNode's own log, not to the server."""
    (tmp_path / "a-file").write_text("")
    log = tmp_path / "a-file" / "state" / "site-a.errors.log"
    err = FileNotFoundError(f"[Errno 2] No such file or directory: '{log.parent}'")
    public = str(public_error("site-a", log, "describe", err))
    assert public == ("FileNotFoundError in describe at site site-a; the details are in "
                      "its SuperNode's log (its state folder could not be written)")
    assert str(tmp_path) in capsys.readouterr().err  # the operator's copy has them


def test_a_site_name_tag_is_read_only_when_it_is_a_site_name():
    from mmvm.federation.site_errors import untagged

    assert untagged("[site lab-1] DataError: x") == ("lab-1", "DataError: x")
    assert untagged("DataError: [site a] x") == (None, "DataError: [site a] x")
    # text that would read as the server's own words is no name, and not shown as one
    assert untagged("[site a, node 99 (b] DataError: x") == (None, "DataError: x")
    assert untagged("[site ] DataError: x")[0] is None
