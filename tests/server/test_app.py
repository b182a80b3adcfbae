"""The ServerApp's failure line: where a failed run can continue from."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from mmvm.federation.server_state import ServerState, save_server_state
from mmvm.federation.settings import app_run_config, load_settings
from server.app import resume_hint, start_line, state_path


def _context(tmp_path, run_id: int = 42) -> Context:
    rc = app_run_config(out_dir=str(tmp_path / "runs"))
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                   run_config=rc)


def _state(window: int) -> ServerState:
    return ServerState(window=window, sites=[], averaged={}, routing={}, missed={},
                       absent=[], history=[], bytes_total=0, seconds=0.0, alignment={})


def test_a_failed_run_with_a_saved_state_says_how_to_resume_it(tmp_path):
    ctx = _context(tmp_path)
    assert resume_hint(ctx) is None  # failed before the sites attached: nothing saved
    path = tmp_path / "runs" / "run-42" / "server_state.pt"
    s = load_settings(ctx.run_config)
    save_server_state(path, s, _state(-1))
    assert "after the sites attached" in resume_hint(ctx)
    save_server_state(path, s, _state(2))
    hint = resume_hint(ctx)
    assert f"after window 3 is in {path}" in hint and "resume='42'" in hint


def test_no_hint_from_a_state_of_other_settings_or_a_broken_file(tmp_path):
    ctx = _context(tmp_path)
    path = tmp_path / "runs" / "run-42" / "server_state.pt"
    other = load_settings(app_run_config(out_dir=str(tmp_path / "runs"), exchange="step"))
    save_server_state(path, other, _state(0))
    assert resume_hint(ctx) is None  # resume would refuse it: no false promise
    path.write_bytes(b"not a checkpoint")
    assert resume_hint(ctx) is None


def test_a_resumed_run_keeps_the_first_runs_state_and_id(tmp_path):
    """The sites keep their state under the first run's id: a resumed run that fails
    is resumed again with that id, from the state the resumed run wrote there."""
    rc = app_run_config(out_dir=str(tmp_path / "runs"), resume="42")
    ctx = Context(run_id=77, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    s = load_settings(rc)
    assert state_path(s, 77) == tmp_path / "runs" / "run-42" / "server_state.pt"
    save_server_state(state_path(s, 77), s, _state(5))
    hint = resume_hint(ctx)
    assert "after window 6" in hint and "resume='42'" in hint and "run-77" not in hint
    # written as Flower prints it or zero-padded, the id names the same folder
    padded = load_settings(app_run_config(out_dir=str(tmp_path / "runs"), resume="042"))
    assert state_path(padded, 77) == state_path(s, 77)


def test_a_run_whose_state_another_serverapp_writes_is_refused(tmp_path):
    """Two resumes of one run at once: the second raced the first and failed blaming a
    pruned state folder. The run's folder is held for the ServerApp's whole run."""
    import pytest

    from mmvm.config import ConfigError
    from mmvm.folder_lock import folder_lock
    from server.app import run

    folder = tmp_path / "runs" / "run-42"
    with folder_lock(folder, "a test"), pytest.raises(ConfigError) as info:
        run(None, _context(tmp_path))  # the lock comes before the first message
    assert str(info.value) == (f"{folder}: another process (a ServerApp of run 42) is "
                               f"writing this folder now; wait for it to end or choose "
                               f"another folder")


def test_a_resume_waits_for_the_serverapp_it_continues_to_end(tmp_path):
    """A resume submitted right after the SuperLink restarted found the run's folder
    still held by the ServerApp it continues (ending once its SuperLink calls fail)
    and was refused: a resume waits connect-timeout for it."""
    import threading

    import pytest

    from mmvm.folder_lock import folder_lock

    folder = tmp_path / "run-42"
    ending = folder_lock(folder, "the old ServerApp")
    ending.__enter__()
    threading.Timer(0.3, ending.__exit__, (None, None, None)).start()
    with folder_lock(folder, "the resume", wait=10.0):  # taken once the old one ends
        pass
    with folder_lock(folder, "a live ServerApp"), pytest.raises(ValueError,
                                                               match=r"\(waited 0.2 s\)"):
        with folder_lock(folder, "the resume", wait=0.2):
            pass


def test_a_server_file_that_cannot_be_written_is_one_line_and_a_resume(
        tmp_path, monkeypatch, capsys):
    """Walkthrough: the run folder made read-only mid-run ended in Flower's traceback
    of a WriteError and 'ended without a reason of its own'. It is the run's failure
    line now, with where its last state is to resume from."""
    import errno

    import pytest

    import server.app as server_app
    from mmvm.atomic import WriteError

    ctx = _context(tmp_path)
    path = tmp_path / "runs" / "run-42" / "server_state.pt"
    save_server_state(path, load_settings(ctx.run_config), _state(5))

    def full(grid, context):
        raise WriteError(errno.EPERM, f"could not write {path}: Operation not permitted; "
                                      f"the previous server_state.pt is intact")

    monkeypatch.setattr(server_app, "run", full)
    with pytest.raises(server_app.RunFailed):
        server_app.main(None, ctx)
    out = capsys.readouterr().out
    assert f"mmvm: run failed: could not write {path}: Operation not permitted" in out
    assert "after window 6 is in" in out and "resume='42'" in out


def test_an_unexpected_error_still_says_where_to_resume_and_keeps_its_traceback(
        tmp_path, monkeypatch, capsys):
    """A bug, or Flower's grid giving up after its retries, ended in a traceback
    alone: a user of a long run did not learn that its state is kept."""
    import pytest

    import server.app as server_app

    ctx = _context(tmp_path)
    save_server_state(tmp_path / "runs" / "run-42" / "server_state.pt",
                      load_settings(ctx.run_config), _state(5))

    def broken(grid, context):
        raise KeyError("node 7")

    monkeypatch.setattr(server_app, "run", broken)
    with pytest.raises(KeyError):  # re-raised: Flower logs the traceback
        server_app.main(None, ctx)
    out = capsys.readouterr().out
    assert "mmvm: run failed: unexpected KeyError: 'node 7'" in out
    assert "after window 6 is in" in out and "resume='42'" in out


def test_a_missing_eval_data_folder_fails_the_run_before_it_asks_any_site(tmp_path, capsys):
    """The ServerApp checks the folder before the first message, not after training
    (in-process: every failure line ends a run the same way under ``flwr run``, as
    tests/federation/test_run_command.py shows with a site's)."""
    import pytest

    import server.app as server_app

    rc = app_run_config(out_dir=str(tmp_path / "runs"), eval_data="/nowhere")
    ctx = Context(run_id=42, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with pytest.raises(server_app.RunFailed):
        server_app.main(None, ctx)  # no grid: no site is asked anything
    out = capsys.readouterr().out
    assert out.count("run failed:") == 1 and "resume=" not in out
    assert "mmvm: run failed: run config: eval-data = '/nowhere': no " \
           "/nowhere/train.parquet" in out, out


def test_step_exchange_says_when_it_is_not_bit_for_bit(tmp_path):
    """The README's 'identical to centralized, bit for bit' needs float32 posteriors;
    the default float16 gave 1.5e-3 after 10 steps and nothing said so."""
    from server.app import exactness_note

    def settings(**kw):
        return load_settings(app_run_config(out_dir=str(tmp_path), **kw))

    assert "posteriors sent as float16: close to centralized training, not bit for " \
           "bit" in exactness_note(settings(exchange="step"))
    assert "sent as int8" in exactness_note(settings(exchange="step", float16=False,
                                                     quantize="int8"))
    assert exactness_note(settings(exchange="step", float16=False)) is None
    assert exactness_note(settings(exchange="round")) is None


def test_a_resumed_runs_first_line_names_the_run_and_folder_it_continues(tmp_path):
    """A walkthrough's resume wrote its results to a new run folder while the one the
    stop named kept only server_state.pt, and nothing said how the two belong
    together: the resumed run's first line says so."""
    runs = tmp_path / "runs"
    first = start_line(load_settings(app_run_config(out_dir=str(runs))), 42,
                       runs / "run-42")
    assert first.endswith(f"results will be in {runs / 'run-42'}"), first
    again = start_line(load_settings(app_run_config(out_dir=str(runs), resume="42")), 77,
                       runs / "run-77")
    assert again.endswith(f"results will be in {runs / 'run-77'}; it resumes run 42, "
                          f"whose state stays in {runs / 'run-42'}"), again
