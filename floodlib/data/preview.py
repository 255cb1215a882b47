"""Preview figures of a split's samples."""

from __future__ import annotations

import numpy as np

#: The terrain's colour map in every figure: greys, dark low, light high, so that low ground is never read as
#: the water that the depth panels beside it draw in blues.
TERRAIN_COLOURS = "gray"


def preview_samples(dataset, *, n: int = 4, seed: int = 0, title: str | None = None):
    """A figure of ``n`` random samples of ``dataset`` (a :class:`~floodlib.data.dataset.PatchDataset`):
    one row each with the terrain (m), depth at n (m), boundary ring of the depth at n + dt (m) and the
    depth change (m). Depth panels share one colour scale; the change uses a symmetric diverging scale.

    Returns the matplotlib Figure (not shown; save it with ``fig.savefig``).
    """
    import matplotlib.pyplot as plt

    if len(dataset) == 0:
        reason = f": {dataset.summary.empty_reason()}" if hasattr(dataset, "summary") else ""
        raise ValueError(f"split {getattr(dataset, 'name', '?')!r} has no samples to preview{reason}")
    if n < 1:
        raise ValueError(f"preview_samples: n={n!r}; a figure needs at least one sample")
    rng = np.random.default_rng(seed)
    items = sorted(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    samples = [dataset[int(i)] for i in items]
    depth_max = max(float(s.depths.max()) for s in samples) or 1.0
    change_max = max(float(s.depth_change.abs().max()) for s in samples) or 1.0
    fig, axes = plt.subplots(len(samples), 4, figsize=(12, 3 * len(samples)), squeeze=False, constrained_layout=True)
    columns = ("terrain (m)", "depth at n (m)", "boundary ring at n+dt (m)", "depth change (m)")
    for row, (item, sample) in enumerate(zip(items, samples)):
        info = dataset.sample_info(int(item)) if hasattr(dataset, "sample_info") else {}
        panels = (
            (sample.terrain[0].numpy(), dict(cmap=TERRAIN_COLOURS)),
            (sample.depths[1].numpy(), dict(cmap="Blues", vmin=0, vmax=depth_max)),
            (sample.depths[0].numpy(), dict(cmap="Blues", vmin=0, vmax=depth_max)),
            (sample.depth_change[0].numpy(), dict(cmap="RdBu", vmin=-change_max, vmax=change_max)),
        )
        for col, (image, style) in enumerate(panels):
            ax = axes[row, col]
            shown = ax.imshow(image, interpolation="nearest", **style)
            fig.colorbar(shown, ax=ax, shrink=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col])
        label = f"#{item}"
        if info:
            label += f"\n{info['plan']}\nframe {info['frame']}, cell ({info['row']}, {info['col']})"
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
