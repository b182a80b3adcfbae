"""``mmvm site check``: a node config read as the site's ClientApp reads it, on real
site files, real keys and a real public key directory (``holders`` and the policy
sentence: test_site_holders.py)."""

from __future__ import annotations

import os
from pathlib import Path

from mmvm.cli import main
from mmvm.cli.site_check import ERROR, OK, WARNING, check_node_config
from mmvm.config import config_digest, load_config
from mmvm.secure.keys import SiteKeys, save_public_directory
from tests.support.site_nodes import CONFIG, DIGEST, ROOT, findings, node_config


def test_a_good_secure_site_is_ready_and_its_peers_are_listed(fed):
    check = check_node_config(node_config(fed), load_config(CONFIG))
    assert check.ok and check.count(WARNING) == 0, check.findings
    assert {f.item for f in check.findings} == {"data", "experiment", "policy", "keys",
                                                 "directory", "peers", "state"}
    assert "trains m0" in findings(check, "experiment", OK)[0]
    assert "192 rows" in findings(check, "data", OK)[0]
    peers = findings(check, "peers", OK)[0]
    for n in ("site-b", "site-c"):
        assert f"{n} {fed['keys'][n].public.fingerprint}" in peers
    assert "require-secure on, allow-collect off" in findings(check, "policy", OK)[0]


def test_every_problem_is_found_at_once(fed):
    """A typo'd key, a world-readable key file, a wrong pinned fingerprint: all
    three reported, the typo with its nearest valid key."""
    key_file = fed["root"] / "keys" / "site-a" / "site_keys.json"
    key_file.chmod(0o644)
    bad_pin = "site-b=" + "0" * 32 + ";site-c=" + fed["keys"]["site-c"].public.fingerprint
    check = check_node_config(node_config(fed, peers=bad_pin, **{"min-rowz": 3}))
    errors = [f"{f.item}: {f.detail}" for f in check.findings if f.status == ERROR]
    assert len(errors) == 3, errors
    assert "did you mean 'min-rows'?" in errors[0]
    assert "chmod 600" in errors[1]
    assert "keys of site-b are not the pinned ones" in errors[2]


def test_keys_of_another_site_and_a_replaced_directory_entry(fed):
    root = fed["root"]
    check = check_node_config(node_config(fed, keys=str(root / "keys" / "site-b" / "site_keys.json")))
    assert "holds the keys of 'site-b'" in findings(check, "keys", ERROR)[0]
    assert not findings(check, "site", ERROR)  # the data folder says site-a: keys wrong
    # the same mistake the other way (a wrong site=): the keys' own entry is no peer
    # to pin (a walkthrough was told to pin its own site)
    pins = ";".join(f"{n}={fed['keys'][n].public.fingerprint}" for n in ("site-b", "site-c"))
    check = check_node_config(node_config(fed, "site-x", peers=pins, holders=None,
                                  data=str(root / "data" / "site-a"),
                                  keys=str(root / "keys" / "site-a" / "site_keys.json")))
    assert "holds the keys of 'site-a'" in findings(check, "keys", ERROR)[0]
    assert not any("site-a" in d for d in findings(check, "peers", WARNING)), check.findings
    # and the cause comes first: the keys and the data folder both say site-a
    first = check.findings[0]
    assert (first.item, first.status) == ("site", ERROR), check.findings
    assert "site= is likely meant to be 'site-a'" in first.detail
    # the operator's directory swaps site-a's key: the others would seal to it
    forged = {n: k.public for n, k in fed["keys"].items()}
    forged["site-a"] = SiteKeys.generate("site-a").public
    save_public_directory(root / "forged.json", forged)
    check = check_node_config(node_config(fed, directory=str(root / "forged.json")))
    assert "not this site's" in findings(check, "directory", ERROR)[0]


def test_a_plaintext_site_and_trust_in_the_whole_directory_are_warned(fed):
    check = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  **{"require-psi": None}))
    assert check.ok and "plaintext site" in findings(check, "policy", WARNING)[-1]
    check = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  **{"require-secure": True, "require-psi": None}))
    # the node config is refused (it was a warning of the check only): require-secure
    # without keys= is a secure site whose keys were lost to a typo
    assert "require-secure belongs to a secure site, but keys= is missing" in \
        findings(check, "policy", ERROR)[0]
    check = check_node_config(node_config(fed, keys=None, directory=None,
                                  **{"require-psi": None}))
    assert "peers belongs to a secure site, but keys= is missing" in \
        findings(check, "policy", ERROR)[0]
    check = check_node_config(node_config(fed, keys=None, peers=None, directory=None))
    assert "require-psi without keys would refuse every run" in \
        findings(check, "policy", ERROR)[0]
    check = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  **{"require-psi": None, "allow-collect": "false"}))
    # the safer choice is said, not warned; on, the weights are (the plaintext line)
    assert check.ok and "allow-collect off without keys: this site refuses plaintext " \
        "runs in which another site holds one of its modalities" in \
        " ".join(findings(check, "policy", OK))
    check = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  **{"require-psi": None}))
    assert "and its final weights when a run asks (allow-collect on)" in \
        findings(check, "policy", WARNING)[-1]
    check = check_node_config(node_config(fed, peers="*"))
    assert check.ok and "every entry" in findings(check, "peers", WARNING)[0]


def test_data_that_does_not_fit_the_experiment_or_is_missing(fed, tmp_path):
    hippo = load_config(ROOT / "configs" / "hippocampus.toml")
    check = check_node_config(node_config(fed), hippo)
    assert "holds none of the configured modalities" in findings(check, "experiment",
                                                               ERROR)[0]
    (fed["root"] / "data" / "site-a" / "test.parquet").unlink()
    check = check_node_config(node_config(fed))
    assert check.ok and "evaluation" in findings(check, "data", WARNING)[0]
    check = check_node_config(node_config(fed, data=str(tmp_path / "nowhere")))
    assert "nowhere: no such folder" in findings(check, "data", ERROR)[0]
    check = check_node_config(node_config(fed, data=str(tmp_path)))
    assert f"data={tmp_path}: no train.parquet there" in findings(check, "data", ERROR)[0]
    (fed["root"] / "state").mkdir()
    (fed["root"] / "state" / "site-a").write_text("a file")
    assert "is not a folder" in findings(check_node_config(node_config(fed)), "state", ERROR)[0]


def test_an_experiment_beyond_the_sites_limits_fails_the_check(fed):
    """The limits a run's first messages would hit: the model's parameters
    (max-params) and the plan on the site's own 192 rows (max-visits)."""
    cfg = load_config(CONFIG)
    ok = check_node_config(node_config(fed), cfg)
    assert "max-params 200,000,000" in findings(ok, "policy", OK)[0]
    small = check_node_config(node_config(fed, **{"max-params": "1000"}), cfg)
    assert "(max-params)" in findings(small, "experiment", ERROR)[0]
    short = check_node_config(node_config(fed, **{"max-visits": "1000"}), cfg)
    visits = 192 * cfg.train.epochs
    assert f"{cfg.train.epochs} epochs over 192 samples: {visits:,} rows" in \
        findings(short, "experiment", ERROR)[0]


def test_latents_beyond_max_step_gib_fail_the_check_not_the_first_run(fed, monkeypatch):
    """The final evaluation's latents (train and test rows x latent size) are refused
    at attach under max-step-gib: the check says so first. (A latent size that big
    would build a model of gigabytes here: the tables' size is stood in for.)"""
    from mmvm.federation import site_limits

    cfg = load_config(CONFIG)
    sizes = []
    monkeypatch.setattr(site_limits, "table_bytes",
                        lambda c, rows, mods: sizes.append((rows, mods)) or 2**31)
    found = check_node_config(node_config(fed, **{"max-step-gib": "1"}), cfg)
    assert "the final evaluation's latents (its train and test rows) would need" in \
        " ".join(findings(found, "experiment", ERROR)), found
    assert sizes == [(192 + 128, 1)]  # 96 test rows counted as the next power of two


def test_an_open_state_folder_is_warned(fed):
    state = fed["root"] / "state" / "site-a"
    state.mkdir(parents=True)
    os.chmod(state, 0o755)
    assert "chmod 700" in findings(check_node_config(node_config(fed)), "state", WARNING)[0]


def test_the_command_takes_what_flower_supernode_takes(fed, capsys, tmp_path):
    nc = node_config(fed)
    text = " ".join(f'{k}="{v}"' for k, v in nc.items())
    assert main(["site", "check", "--config", CONFIG, "--node-config", text]) == 0
    out = capsys.readouterr().out
    assert "site-a: ready; 0 warning(s)" in out
    # what it cannot check, said where an administrator would stop reading
    assert "code        a node config binds only the code that reads it: start the " \
           "site's SuperExec with --allow-fab <sha256>" in out
    toml = tmp_path / "node.toml"  # flower-supernode --node-config FILE.toml
    toml.write_text("\n".join(f'{k} = "{v}"' for k, v in nc.items()) + '\nmin-rows = 0\n')
    assert main(["site", "check", "--node-config", str(toml)]) == 1
    assert "min-rows = 0 is not a positive integer" in capsys.readouterr().out
    # a word that is not key=value, which flower-supernode would drop silently
    assert main(["site", "check", "--node-config", text + " peers"]) == 2
    assert "'peers' is not key=value" in capsys.readouterr().err


def test_bad_values_do_not_hide_the_other_checks(fed):
    """Two values that do not parse and a wrong pin: three errors, and the keys, the
    directory and the state are still checked."""
    bad_pin = "site-b=" + "0" * 32 + ";site-c=" + fed["keys"]["site-c"].public.fingerprint
    check = check_node_config(node_config(fed, peers=bad_pin, **{"min-rows": 0,
                                                         "require-secure": "maybe"}))
    errors = [f"{f.item}: {f.detail}" for f in check.findings if f.status == ERROR]
    assert len(errors) == 3, errors
    assert "not a boolean" in errors[0] and "positive integer" in errors[1]
    assert "keys of site-b are not the pinned ones" in errors[2]
    assert findings(check, "keys", OK) and findings(check, "directory", OK)
    assert "the values that parse" in findings(check, "policy", OK)[0]


def test_a_test_split_of_other_modalities_fails_the_check(fed):
    """The final evaluation reads test.parquet with the train file's modalities."""
    root = fed["root"] / "data"
    (root / "site-a" / "test.parquet").write_bytes(
        (root / "site-b" / "test.parquet").read_bytes())
    check = check_node_config(node_config(fed), load_config(CONFIG))
    assert "does not hold train.parquet's modalities" in findings(check, "data", ERROR)[0]


def test_who_may_change_the_directory_and_relative_paths(fed, monkeypatch):
    directory = fed["root"] / "keys" / "public_keys.json"
    directory.chmod(0o666)
    check = check_node_config(node_config(fed))
    assert check.ok and "whom the site trusts" in findings(check, "directory", WARNING)[0]
    monkeypatch.chdir(fed["root"])
    check = check_node_config(node_config(fed, data="data/site-a"))
    assert "is relative" in findings(check, "paths", WARNING)[0]
    assert findings(check, "data", OK)  # read from here, as the SuperNode would


def test_a_config_outside_the_app_is_noted(fed, tmp_path):
    """A deployed run names configs/<file> of the app bundle: a config elsewhere
    checks fine here but cannot be the run's."""
    assert not findings(check_node_config(node_config(fed), load_config(CONFIG)), "experiment",
                     WARNING)
    copy = tmp_path / "lab.toml"
    copy.write_text(Path(CONFIG).read_text())
    check = check_node_config(node_config(fed), load_config(copy))
    assert check.ok and "not under the app's" in findings(check, "experiment", WARNING)[0]


def test_a_copy_of_the_app_is_checked_with_app(fed, capsys, tmp_path, monkeypatch):
    """A lab's config in a copy of the app (README: custom configs): in the copy,
    without --app, the copy is the app (as `flwr run .` takes it); from elsewhere it
    is not this checkout's, and the warning names the option; with --app the copy's
    configs/ is the app's, from the copy or from anywhere else; a folder that is no
    copy of the app is refused."""
    import shutil

    copy = tmp_path / "appcopy"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(ROOT / "configs", copy / "configs")
    shutil.copy(CONFIG, copy / "configs" / "labs3.toml")
    text = " ".join(f'{k}="{v}"' for k, v in node_config(fed).items())
    check = ["site", "check", "--node-config", text, "--config", "configs/labs3.toml"]
    monkeypatch.chdir(copy)
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "site-a: ready; 0 warning(s)" in out and "configs/labs3.toml: trains m0" in out
    monkeypatch.chdir(tmp_path)
    assert main([*check, "--config", str(copy / "configs" / "labs3.toml")]) == 0
    out = capsys.readouterr().out
    assert f"labs3.toml is not under the app's {ROOT / 'configs'} (--app DIR" in out
    assert "site-a: ready; 1 warning(s)" in out
    monkeypatch.chdir(copy)
    assert main([*check, "--app", "."]) == 0
    out = capsys.readouterr().out
    assert "site-a: ready; 0 warning(s)" in out and "configs/labs3.toml: trains m0" in out
    monkeypatch.chdir(tmp_path)  # relative to the app, not to here
    assert main([*check, "--app", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "ready; 0 warning(s)" in out and f"{copy}/configs/labs3.toml: trains" in out
    assert main([*check, "--app", str(copy), "--config", "configs/nowhere.toml"]) == 2
    assert f"no such file in the app {copy} (--app)" in capsys.readouterr().err
    assert main([*check, "--app", str(tmp_path)]) == 2
    assert f"--app {tmp_path}: not a copy of this app" in capsys.readouterr().err


def test_settings_that_would_fail_runs_later_are_warned_now(fed):
    """What an administrator gets wrong without an error at start: a peer left
    unpinned, pseudonym alignment allowed for guessable ids, a min-rows no plan can
    meet, a directory not where the default looks; and every limit an experiment
    breaks is named, not only the first."""
    site_b = next(n for n in fed["keys"] if n != "site-a")
    pins = f"{site_b}={fed['keys'][site_b].public.fingerprint}"
    check = check_node_config(node_config(fed, peers=pins, **{"require-psi": None,
                                                     "min-rows": "100000"}),
                              load_config(CONFIG))
    assert "not pinned, so not trusted" in " ".join(findings(check, "peers", WARNING))
    warned = " ".join(findings(check, "policy", WARNING))
    assert "require-psi off" in warned
    # require-secure (the secure site's default) refuses the rest: no run at all
    assert "min-rows 100,000 is more than this site's 192 train rows: every secure " \
        "run's plan will be refused (and require-secure refuses the others)" in \
        findings(check, "policy", ERROR)
    # above the test rows (96) only: the site's cross-site scores are all withheld
    few = check_node_config(node_config(fed, **{"min-rows": "100"}))
    assert few.ok and "min-rows 100 is more than this site's 96 test rows: every " \
        "cross-site score of its test rows is withheld" in " ".join(
            findings(few, "policy", WARNING))
    loose = check_node_config(node_config(fed, **{"min-rows": "100000", "require-secure": "false",
                                          "allow-collect": "true"}))
    assert "min-rows 100,000 is more than" in " ".join(findings(loose, "policy", WARNING))
    tight = check_node_config(node_config(fed, **{"max-batch": "2", "max-steps": "3",
                                          "max-step-gib": "1"}),
                              load_config(CONFIG, ["train.batch_size=4096"]))
    errors = " ".join(findings(tight, "experiment", ERROR))
    assert "(max-batch)" in errors and "(max-steps)" in errors
    assert "(max-step-gib)" in errors
    shared = fed["root"] / "shared"  # like /tmp: anyone may make the folder first
    shared.mkdir()
    os.chmod(shared, 0o1777)
    early = check_node_config(node_config(fed, state=str(shared / "site-a")))
    assert "another one could make it first" in findings(early, "state", WARNING)[0]
    (shared / "theirs").mkdir()
    (shared / "link").symlink_to(shared / "theirs")
    linked = check_node_config(node_config(fed, state=str(shared / "link")))
    assert "is a link or belongs to another user" in findings(linked, "state", ERROR)[0]
    plain = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  **{"require-psi": None, "min-rows": "5"}))
    plain_said = " ".join(findings(plain, "policy", WARNING))
    assert "min-rows without keys" not in plain_said  # it has an effect there:
    assert "min-rows 5: plaintext runs score no cross-site evaluation here" in plain_said
    assert 'eval-labels = "" keeps test labels unread there' in plain_said
    # a keyed site that takes plaintext runs: min-rows guards its secure runs only
    open_door = check_node_config(node_config(fed, **{"require-secure": "false",
                                              "min-rows": "16"}))
    assert "min-rows 16 does not bound them: their windows report the losses of " \
        "whatever batch the plan says, one row too" in " ".join(
            findings(open_door, "policy", WARNING))
    typo = check_node_config(node_config(fed, **{"eval-labels": "label,label.dx"}),
                             load_config(CONFIG, ["data.label=label.dx"]))
    assert "eval-labels label.dx match no label column" in " ".join(
        findings(typo, "policy", WARNING))
    assert "data.label = 'label.dx' is not in this site's eval-labels" not in " ".join(
        findings(typo, "experiment", WARNING))
    on_cpu = check_node_config(node_config(fed, device="cpu"),
                               load_config(CONFIG, ["train.device=cuda"]))
    assert "device cpu)" in findings(on_cpu, "experiment", OK)[0]  # the site's, not the run's
    other = check_node_config(node_config(fed), load_config(CONFIG, ["data.label=label.dx"]))
    assert "data.label = 'label.dx' is not in this site's eval-labels" in " ".join(
        findings(other, "experiment", WARNING))
    typo_data = check_node_config({"site": "site-a", "dta": "/srv/site-a", "zzzz": "1"})
    found = findings(typo_data, "data", ERROR)[0]
    assert "unknown key 'dta' (did you mean 'data'?), unknown key 'zzzz'" in found
    lost = check_node_config(node_config(fed, directory=None))
    assert "set directory= to the public key directory" in findings(lost, "directory",
                                                                ERROR)[0]


def test_a_plaintext_site_named_outside_its_state_folder_is_an_error(fed):
    """site="../x" would put `<state>/../x.pt` beside the folder; plaintext sites are
    held to it too (the ClientApp refuses the run), and no state is checked for it."""
    check = check_node_config(node_config(fed, site="../x", keys=None, directory=None,
                                  peers=None, data=str(fed["root"] / "data" / "site-a"),
                                  **{"require-psi": None}))
    assert not check.ok
    assert "invalid site name '../x'" in findings(check, "policy", ERROR)[0]
    assert not [f for f in check.findings if f.item == "state"]
    assert findings(check, "data", OK)  # the rest is still checked


def test_keys_or_state_inside_a_flower_app_are_warned(fed):
    """A test bed's keys and state made in the project go into the app bundle with a
    plain `flwr run .` (mmvm run refuses; Flower does not)."""
    (fed["root"] / "pyproject.toml").write_text('[tool.flwr.app]\npublisher = "x"\n')
    check = check_node_config(node_config(fed))
    said = " ".join(findings(check, "paths", WARNING))
    for key in ("keys", "directory", "state"):
        assert f"{key}={fed['root']}" in said
    assert f"is inside the Flower app {fed['root']}" in said
    # the documented layout: keys/ in the app's .gitignore (Flower's own matching)
    (fed["root"] / ".gitignore").write_text("/keys/\nstate/\n")
    said = " ".join(findings(check_node_config(node_config(fed)), "paths", WARNING))
    assert "keys=" not in said and "directory=" not in said and "state=" not in said


def test_pixels_stored_unscaled_are_warned_before_a_run_trains_on_them(fed):
    """uint8 images written with scale 1: the model would see 0..255 where its
    sigmoid decoders produce 0..1; the file is valid, so this is a warning."""
    from mmvm.data.store import read_site_table, write_site_table

    files = [fed["root"] / "data" / "site-a" / f"{s}.parquet" for s in ("train", "test")]
    for f in files:
        t = read_site_table(f)
        write_site_table(f, t.sample_ids, t.tensors, t.labels, {}, scales={"m0": 1.0})
    check = check_node_config(node_config(fed), load_config(CONFIG))
    warned = findings(check, "data", WARNING)
    assert check.ok and len(warned) == 2, check.findings
    for f, line in zip(files, warned, strict=True):
        assert line.startswith(f"{f}: modality 'm0' holds values 0..255")


def test_a_site_with_keys_but_no_peers_is_told_which_names_to_pin(fed):
    check = check_node_config(node_config(fed, site="site-b", peers=None))
    assert not check.ok
    assert "must pin its peers" in findings(check, "policy", ERROR)[0]
    others = sorted(n for n in fed["keys"] if n != "site-b")
    hint = findings(check, "peers", ERROR)[0]
    assert "peers=\"" + ";".join(f"{n}=<fingerprint>" for n in others) + "\"" in hint
    assert "site-b=" not in hint and "out of band" in hint


def test_the_experiment_a_site_may_run_is_pinned_by_the_digest_the_check_prints(fed):
    cfg = load_config(CONFIG)
    ok = check_node_config(node_config(fed), cfg)
    assert f"digest {DIGEST}" in findings(ok, "experiment", OK)[0]
    assert f"experiment {DIGEST[:16]}..." in findings(ok, "policy", OK)[0]
    loose = check_node_config(node_config(fed, experiment=None), cfg)
    assert loose.ok and any("no experiment: whoever submits a run chooses the model" in d
                            for d in findings(loose, "policy", WARNING))
    wide = load_config(CONFIG, ["model.latent_dim=256"])
    other = check_node_config(node_config(fed), wide)
    assert not other.ok and f"is none the node config pins (experiment={DIGEST[:16]}...):" \
        f" a run of it would be refused" in findings(other, "experiment", ERROR)[0]
    bad = check_node_config(node_config(fed, experiment="abc"), cfg)
    assert "not experiment digests" in findings(bad, "policy", ERROR)[0]


def test_the_config_alone_prints_the_digest_a_node_config_pins(capsys):
    """The two-hospital guide said `mmvm site check --config FILE` prints the digest;
    it answered "the following arguments are required: --node-config"."""
    assert main(["site", "check", "--config", CONFIG]) == 0
    out = capsys.readouterr().out
    assert f"digest {DIGEST}" in out and f'experiment="{DIGEST}"' in out
    from deploy.fab_pin import fab_sha256
    from mmvm.cli.site import default_app

    assert f"--allow-fab {fab_sha256(default_app())}" in out  # and the code to pin
    assert main(["site", "check", "--config", CONFIG, "--set", "model.latent_dim=8"]) == 0
    assert config_digest(load_config(CONFIG, ["model.latent_dim=8"])) in \
        capsys.readouterr().out
    assert main(["site", "check"]) == 2
    assert "give --node-config" in capsys.readouterr().err
