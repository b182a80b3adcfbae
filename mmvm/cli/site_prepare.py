"""``mmvm site prepare``: make a streaming site's decoded copy before its first run.

A site that streams (its node config's ``streaming``, or files over a quarter of its
memory) decodes its files into ``<state>/decoded`` at the first message that reads
them (:mod:`mmvm.data.decoded`): describe, which the server waits for up to
``reply-timeout``. Made here first, with a progress bar, the run finds it current.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mmvm.data.decoded import Source, copies_bytes, copy_bytes, decoded_arrays
from mmvm.data.store_limits import fmt_bytes
from mmvm.federation.node_config import load_policy, site_name
from mmvm.federation.site_config import deployed_streams, whole_bytes
from mmvm.progress import counting_bar


def prepare(nc: Mapping, progress: bool = True) -> int:
    """Decode the site's train and test files into its state folder's ``decoded/``
    where it streams them; say so and do nothing where it reads them whole."""
    if "data" not in nc:
        raise ValueError("--node-config has no data=\"/path/to/site\": a deployment site "
                         "names its data folder in its node config")
    data = Path(str(nc["data"])).expanduser()
    site = site_name(nc)
    policy = load_policy(nc, site)
    files = [p for p in (data / "train.parquet", data / "test.parquet") if p.is_file()]
    if not files:
        raise FileNotFoundError(f"data={nc['data']}: no train.parquet or test.parquet")
    if not deployed_streams(policy, lambda: whole_bytes(files)):
        why = "streaming=false" if policy.streaming is False else \
            "they take under a quarter of this host's memory"
        print(f"mmvm site prepare: site {site} reads its files whole ({why}): nothing "
              f"to prepare")
        return 0
    folder = Path(policy.state, "decoded")
    for path in files:
        decode(path, folder, progress)
    return 0


def decode(path: Path, folder: Path, progress: bool = True) -> None:
    """``path``'s decoded copy in ``folder`` (reused where current), with a bar."""
    from mmvm.data.streaming import StreamingDataset

    index = StreamingDataset(path)  # the ids, to check every row group against
    f = index.files[0]
    need = copy_bytes(int(f.offsets[-1]), f.layout.specs, f.held)
    size = fmt_bytes(need)
    if copies_bytes(folder, path) == need:
        print(f"mmvm site prepare: {path}: its copy in {folder} is current ({size})")
        return
    t0 = time.monotonic()
    with counting_bar(f.num_row_groups, lambda k: f"{path.name}: row group {k}/"
                      f"{f.num_row_groups} ({size})", progress) as step:
        read = index.group_reader(0)

        def counted(k: int):
            group = read(k)
            step()
            return group

        decoded_arrays(folder, Source(f.path, f.stat, int(f.offsets[-1]), f.layout.specs,
                                      f.offsets, counted), f.held)
    print(f"mmvm site prepare: {path} -> {folder} ({size}, {time.monotonic() - t0:.1f} s)")
