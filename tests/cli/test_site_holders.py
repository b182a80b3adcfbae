"""``mmvm site check`` of a node config's ``holders`` against the site's data and the
rest of its policy (a group no run could use is an error), and the policy said in
one sentence (``mmvm/cli/site_holders.py``)."""

from __future__ import annotations

from mmvm.cli.site_check import ERROR, OK, WARNING, check_node_config
from tests.support.site_nodes import DIGEST, findings, node_config


def test_the_policy_is_said_in_one_sentence(fed):
    """An administrator reads what the site accepts and keeps, not 23 settings."""
    said = findings(check_node_config(node_config(fed)), "policy", OK)
    assert f"this site accepts secure runs only aligned by PSI of experiment " \
        f"{DIGEST[:16]}..., with site-b, site-c (pinned); it keeps its final weights; " \
        f"reports a probe of label; trains on a GPU when it has one, else the CPU; reads its " \
        f"files as their size says" in said
    plain = check_node_config(node_config(fed, keys=None, peers=None, directory=None,
                                  experiment=None, **{"require-psi": None}))
    assert "this site accepts plaintext runs only (no keys) of any experiment the " \
        "submitter chooses, with the sites the server names; it hands the server its " \
        "final weights when a run asks; reports a probe of any label column the run " \
        "names" in " ".join(findings(plain, "policy", OK))


def test_a_secure_site_without_holders_is_warned_and_one_left_out_of_them_is_an_error(fed):
    check = check_node_config(node_config(fed, holders=None))
    assert check.ok and any("no holders: the server alone says which sites share"
                            in d for d in findings(check, "policy", WARNING))
    check = check_node_config(node_config(fed, holders="m0=site-b,site-c"))
    assert not check.ok and any("holders lists m0=site-b,site-c without this site (site-a)" in d
                                for d in findings(check, "policy", ERROR))


def test_a_plaintext_sites_holders_and_pinned_experiment_say_what_they_refuse(fed):
    """Without keys, holders= still applies (a made-up co-holder of a modality the
    site holds alone is refused), and a pinned experiment refuses plaintext runs that
    share the site's modalities: the check says so instead of "no effect", and holders
    that say another site holds the modality make that every run (a walkthrough's
    site was "ready" so)."""
    plain = dict(keys=None, peers=None, directory=None, **{"require-psi": None})
    check = check_node_config(node_config(fed, holders="m0=site-a", **plain))
    warned = " ".join(findings(check, "policy", WARNING))
    assert check.ok and "holders" not in warned and "no effect" not in warned, warned
    assert "experiment pinned without keys: this site refuses plaintext runs in which " \
           "another site holds one of its modalities" in " ".join(findings(check, "policy", OK))
    check = check_node_config(node_config(fed, holders="m0=site-b,site-c", **plain))
    assert not check.ok and "holders lists m0=site-b,site-c without this site (site-a): " \
        "every run that shares it is refused" in findings(check, "policy", ERROR)
    check = check_node_config(node_config(fed, holders="m0=site-a,site-c,site-d", **plain))
    assert not check.ok and any("holders says m0 is held at other sites too, and without "
                                "keys this site refuses plaintext runs that average it "
                                "(experiment pinned)" in d
                                for d in findings(check, "policy", ERROR))
    check = check_node_config(node_config(fed, **{"require-secure": "false",  # keys: both modes
                                          "allow-collect": "true"}))
    assert "experiment is pinned, and the server alone would choose their mean" in \
        " ".join(findings(check, "policy", WARNING))


def test_holders_that_no_secure_run_could_use_fail_the_check(fed):
    """Two holders without allow-pair-masking, or a holder the site does not pin:
    every run that averages the modality fails at attach; the check says so now."""
    check = check_node_config(node_config(fed, holders="m0=site-a,site-b"))
    assert not check.ok and any("holders lists m0 at two sites, a masking group that "
                                "allow-pair-masking off refuses" in d
                                for d in findings(check, "policy", ERROR))
    assert check_node_config(node_config(fed, holders="m0=site-a,site-b",
                                 **{"allow-pair-masking": "true"})).ok
    check = check_node_config(node_config(fed, holders="m0=site-a,site-b,site-x"))
    assert not check.ok and any("holders names site-x, which peers does not pin" in d
                                for d in findings(check, "policy", ERROR))
    assert check_node_config(node_config(fed, holders="m0=site-a,site-b,site-c")).ok


def test_a_data_folder_of_another_view_than_holders_lists_is_an_error(fed):
    """A hospital's node config pointed at the lateral folder and listed itself as
    frontal's holder: the check said ready, the run failed after the PSI had run."""
    check = check_node_config(node_config(fed, holders="m1=site-a"))  # its data holds m0
    assert not check.ok
    said = findings(check, "policy", ERROR)[0]
    assert said.startswith("holders lists this site for m1, its data (")
    assert said.split("holds ")[1].startswith("m0: the wrong data folder")
    assert check_node_config(node_config(fed)).ok  # m0=site-a: as its data
