"""The ``[model.modalities]`` sections ``mmvm data prepare`` prints for the files it
wrote: kind and shape as the files say, a network that takes the shape, the usual
likelihood (a starting point), the label names and the ``[data] label`` to set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# first choices among the networks that take a shape, after the kind's default:
# res_image (the MIMIC-CXR and CelebA configs') over cub_image (CUB's, birds in RGB):
# on 64 px chest X-ray look-alikes, 30 epochs, probe 0.99 against 0.65 and a
# reconstruction error below the mean image's against far above it (walkthrough of
# 2026-12-05)
PREFERRED = {"image": ("res_image",)}


def config_snippet(paths: Mapping[str, Path]) -> str:
    """``[model.modalities.<name>]`` sections for the written data: kind and shape as
    the files say, a registered network that takes the shape, the usual likelihood
    (a starting point, to be tuned)."""
    from mmvm.data.store import read_site_meta
    from mmvm.networks import DEFAULT_NETWORK, available_networks, get_network

    meta = read_site_meta(paths["train"])
    dtypes = (meta.get("dataset") or {}).get("source_dtypes") or {}
    counted = set((meta.get("dataset") or {}).get("counts") or [])
    out = []
    for m, t in meta["tensors"].items():
        shape = tuple(t["shape"])
        image = t["dtype"] == "uint8" and len(shape) == 3 and shape[0] in (1, 3)
        kind = "image" if image else "vector"
        if not image and len(shape) == 3 and (shape[0] in (1, 3) or shape[2] in (1, 3)):
            out.append(f"# {m}: [{', '.join(map(str, shape))}] numbers. If these are "
                       f"images, save them as uint8 [N, C, H, W] with values 0..255 "
                       f"for kind = \"image\" and an image network")
        elif not image and len(shape) == 2 and min(shape) >= 8 and \
                dtypes.get(m) == "uint8":
            out.append(f"# {m}: [{', '.join(map(str, shape))}] bytes. If these are "
                       f"grey images, add their channel axis (uint8 [N, 1, "
                       f"{shape[0]}, {shape[1]}]: a[:, None]) for kind = \"image\" and "
                       f"an image network")
        names = [DEFAULT_NETWORK[kind], *PREFERRED.get(kind, ()),
                 *available_networks(kind)]
        fits = [n for n in dict.fromkeys(names) if get_network(n).accepts(shape)]
        net = (f'network = "{fits[0]}"' if fits else
               f"# no {kind} network takes {list(shape)}: "
               + "; ".join(f"{n} takes {get_network(n).takes}"
                           for n in available_networks(kind)))
        size = ("" if image else "width = 0  # hidden units = input size (the "
                "hippocampus paper's MLP)\nlayers = 2\n")
        counts = not image and m in counted
        likelihood = ('"laplace"  # or gaussian, mse; bernoulli for values in 0..1'
                      if image else '"mse"  # summed squared error; or poisson (counts), '
                      'gaussian, laplace, bernoulli (values in 0..1)')
        if counts:
            out.append(f"# {m}: non-negative integers ({dtypes.get(m, '?')}): if these "
                       f"are counts, likelihood = \"poisson\" models them as such")
        out.append(f'[model.modalities.{m}]\nkind = "{kind}"\nshape = {list(shape)}\n'
                   f'{net}\n{size}likelihood = {likelihood}\n')
    named = (meta.get("dataset") or {}).get("label_names") or {}
    out += [f"# {c}: " + ", ".join(f"{i} = {n}" for i, n in enumerate(names))
            for c, names in named.items()]
    return "\n".join(out + _label_line(paths["train"]))


def _label_line(path: Path) -> list[str]:
    """The ``[data] label`` a config needs for these files, where the default
    (``label``) is not among their label columns (``--label odor=...`` writes
    ``label.odor``; a config copied from hippocampus.toml reads ``label``)."""
    from mmvm.data.labels import all_label_columns

    cols = all_label_columns([path])
    if not cols or "label" in cols:
        return []
    others = f"; or {', '.join(cols[1:])}" if len(cols) > 1 else ""
    # a comment: the config has its [data] table already (a second is invalid TOML)
    return [f"# in the config's [data] table, the label column the probes and coherence "
            f"score (the default, \"label\", is not in these files{others}):\n"
            f"#   label = \"{cols[0]}\""]
