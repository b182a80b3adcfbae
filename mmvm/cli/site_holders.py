"""``mmvm site check``: a node config's ``holders`` against the site's data and the
rest of its policy, and the policy said in one sentence (what the site accepts and
keeps), which an administrator reads where a list of 23 settings says little."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mmvm.cli.site_findings import ERROR, NodeCheck
from mmvm.federation.policy import SitePolicy


def check_holders_data(check: NodeCheck, holders: Mapping, train: Path) -> None:
    """The modalities the site's data holds against those ``holders`` lists it for:
    a folder of the wrong view passed the check and failed the run after the
    private set intersection had run."""
    from mmvm.data.store import read_site_meta

    held = list(read_site_meta(train)["tensors"])
    mine = sorted(m for m, sites in holders.items() if check.site in sites)
    unlisted = [m for m in held if check.site not in holders.get(m, ())]
    absent = [m for m in mine if m not in held]
    if unlisted or absent:
        check.add("policy", ERROR, f"holders lists this site for "
                  f"{', '.join(mine) or 'no modality'}, its data ({train.parent}) holds "
                  f"{', '.join(held)}: the wrong data folder, or holders= to correct "
                  f"(it names who shares each modality this site holds)")


def check_holder_groups(check: NodeCheck, p: SitePolicy) -> None:
    """``holders`` against the rest of the policy: a group no run could use (this
    site left out, two sites without allow-pair-masking, a site its peers do not
    pin, or others at a plaintext site that refuses to share) fails every run."""
    mine = {m: sorted(g) for m, g in p.holders.items() if check.site in g}
    if not mine:  # (a group of a modality it does not hold is ignored: never asked)
        left = "; ".join(f"{m}={','.join(sorted(g))}" for m, g in p.holders.items())
        check.add("policy", ERROR, f"holders lists {left} without this site "
                  f"({check.site}): every run that shares it is refused")
    shared = {m: g for m, g in mine.items() if len(g) > 1}
    if shared and not p.secure_site and p.plain_sharing_refused:
        check.add("policy", ERROR, f"holders says {', '.join(sorted(shared))} is held "
                  f"at other sites too, and without keys this site refuses plaintext "
                  f"runs that average it ({p.plain_sharing_refused}): every run of this "
                  f"federation would be refused; give the site keys (secure runs), or "
                  f"list it alone if no other site holds it")
    if not p.secure_site:
        return
    pairs = sorted(m for m, g in shared.items() if len(g) == 2)
    if pairs and not p.allow_pair_masking:
        check.add("policy", ERROR, f"holders lists {', '.join(pairs)} at two sites, a "
                  f"masking group that allow-pair-masking off refuses: every run that "
                  f"averages it fails (allow-pair-masking=true lets each of the two "
                  f"learn the other's weights)")
    unpinned = sorted({h for g in shared.values() for h in g if h != check.site}
                      - set(p.peers or ()))
    if p.peers is not None and unpinned:
        check.add("policy", ERROR, f"holders names {', '.join(unpinned)}, which peers "
                  f"does not pin: this site cannot mask with a site it does not trust, "
                  f"so every run that averages their modality fails; pin them in peers")


def summary(p: SitePolicy) -> str:
    """What the policy ``p`` lets a run do at this site, in one sentence."""
    runs = ("secure runs only" if p.require_secure else "secure and plaintext runs") \
        if p.secure_site else "plaintext runs only (no keys)"
    runs += " aligned by PSI" * p.require_psi
    runs += (" of experiment " + ", ".join(d[:16] + "..." for d in p.experiments)
             if p.experiments else " of any experiment the submitter chooses")
    peers = (f"with {', '.join(sorted(p.peers))} (pinned)" if p.peers else
             "with every site of its directory" if p.secure_site else
             "with the sites the server names")
    return (f"this site accepts {runs}, {peers}; it "
            + ("hands the server its final weights when a run asks" if p.allow_collect
               else "keeps its final weights")
            + ("; reports a probe of any label column the run names"
               if "*" in p.eval_labels else "; reports a probe of "
               + ", ".join(p.eval_labels) if p.eval_labels else "; reports no probe")
            + ("" if p.report_losses else "; keeps its loss sums")
            + f"; trains on {'a GPU when it has one, else the CPU' if p.device == 'auto' else p.device}"
            + "; reads its files " + ("as their size says" if p.streaming is None
                                      else "streamed" if p.streaming else "whole"))
