"""The set-up before the first window is said as it goes: in a deployment describe,
align (PSI) and attach took 2.5 minutes with nothing on the console."""

from __future__ import annotations

from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.settings import settings_for
from tests.support.federate import make_sites, plain_endpoints, split


def test_describe_align_and_attach_are_each_said_as_they_begin(cfg, tmp_path,
                                                               tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    lines: list[str] = []
    res = run_federation(LocalTransport(plain_endpoints(sites)),
                         settings_for(cfg, exchange="round"), log=lines.append)
    setup = [line for line in lines if line.startswith("mmvm: set-up")]
    names = ", ".join(sorted(s.name for s in sites.values()))
    assert setup == [
        "mmvm: set-up 1/3: asking the 3 sites what they hold",
        f"mmvm: set-up 2/3: aligning the samples of {names}",
        f"mmvm: set-up 3/3: attaching the sites to the {res.alignment['samples']} aligned "
        f"rows and the plan of 1 window"]  # one epoch, exchange round: one
    assert len(res.history) == 1
