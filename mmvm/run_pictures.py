"""The picture a run folder gets with its evaluation: the cross-modal generation grid
when some modality is an image (``generations.png``), else the latents coloured by
label (``latents.png``): vector data (spike counts, say) drawn as grey images would
show nothing a person can read. ``mmvm evaluate`` and the federated server's
evaluation both write it; ``mmvm report --generate`` draws the same from a
checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def present_latents(model, test_set) -> tuple[np.ndarray, np.ndarray]:
    """Every present modality's posterior mean (the shared latent) of every labelled
    sample of ``test_set`` and its sample's label (``[points, d]``, ``[points]``)."""
    from mmvm.evaluation import encode_dataset, present_labels

    mus, ys = encode_dataset(model, test_set), present_labels(test_set, model.names)
    points = np.concatenate([mus[m] for m in model.names])
    labels = np.concatenate([ys[m] for m in model.names])
    return points[labels >= 0], labels[labels >= 0]  # -1: unknown, no colour


def picture_name(cfg) -> str:
    """The file :func:`run_picture` draws: generations of image data, else latents."""
    return "generations.png" if any(m.kind == "image" for m in cfg.model.modalities) \
        else "latents.png"


def run_picture(model, cfg, test_set, out: Path, title: str,
                label_names: list[str] | None = None) -> dict[str, Path]:
    """``{"generations": path}`` or ``{"latents": path}`` written in ``out``; ``{}``
    for vector data without labels to colour by. ``label_names``: what the label ids
    mean, for the generations' titles and the latents' legend
    (:func:`mmvm.data.label_names.label_names_for`)."""
    from mmvm.plot_generations import generation_grid

    if picture_name(cfg) == "generations.png":
        return {"generations": generation_grid(model, test_set, out / "generations.png",
                                               method=cfg.model.method,
                                               label_name=cfg.data.label,
                                               label_names=label_names)}
    if test_set.labels is None:
        return {}
    return {"latents": latent_panels(model, test_set, out / "latents.png", title,
                                     label_names)}


def latent_panels(model, test_set, path: Path, title: str,
                  label_names: list[str] | None = None) -> Path:
    """The labelled test samples' latents: one panel per modality on shared axes
    (whether the modalities' latents of one sample, rats or views, fall together; a
    pooled panel would show every class twice, as if it had subtypes), or one panel
    of them all beyond :data:`MAX_PANELS` modalities."""
    from mmvm.plot_latents import latent_2d

    if 1 < len(model.names) <= MAX_PANELS:
        from mmvm.latents import common_2d

        mus, ys = latents_by_modality(model, test_set)
        points, pca = common_2d(mus)  # one projection: per-panel PCA rotates each panel
        name = {m: f"{title}: {m}" + (" (common PCA)" if pca else "") for m in mus}
        return latent_2d({name[m]: points[m] for m in mus}, {name[m]: ys[m] for m in ys},
                         path, label_names, share_axes=True)
    points, labels = present_latents(model, test_set)
    name = title if len(model.names) == 1 else f"{title}: all {len(model.names)} modalities"
    return latent_2d({name: points}, labels, path, label_names)


MAX_PANELS = 6  # modalities drawn side by side; more are drawn in one panel


def latents_by_modality(model, test_set) -> tuple[dict, dict]:
    """Per modality: the posterior means of its labelled samples and their labels."""
    from mmvm.evaluation import encode_dataset, present_labels

    mus, ys = encode_dataset(model, test_set), present_labels(test_set, model.names)
    return ({m: mus[m][ys[m] >= 0] for m in model.names},
            {m: ys[m][ys[m] >= 0] for m in model.names})
