"""How every figure is written: matplotlib's Agg backend, one resolution, atomically (a crash
never leaves a half-written PNG under the final name)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from cxrtransfer.core.files import atomic_path  # noqa: E402

DPI = 110


def save_png(fig, out_png: str | os.PathLike) -> None:
    """Write ``fig`` to ``out_png`` (PNG, ``DPI``, tight bounding box) and close it."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
