"""How every figure is made and written: matplotlib's Agg backend, the shared style
(``evaluate.style``), constrained layout, and one save that writes the PNG (``style.DPI``) and
the PDF (text kept as text) atomically (a crash never leaves a half-written file under the
final name)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from cxrtransfer.core.files import atomic_path  # noqa: E402
from cxrtransfer.evaluate import style  # noqa: E402


def figure(nrows: int = 1, ncols: int = 1, **kw):
    """``plt.subplots`` in the shared style with constrained layout (titles, labels, legends
    and colour bars are placed so that none overlaps another)."""
    style.apply()
    kw.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, layout="constrained", **kw)


def save(fig, out_png: str | os.PathLike, out_pdf: str | os.PathLike | None = None) -> None:
    """Write ``fig`` to ``out_png`` (PNG at ``style.DPI``) and, if given, ``out_pdf`` (vector,
    TrueType text), then close it."""
    outs = [(out_png, "png")] + ([(out_pdf, "pdf")] if out_pdf is not None else [])
    with plt.rc_context(style.RC):
        for out, fmt in outs:
            with atomic_path(out) as tmp:
                fig.savefig(
                    tmp, format=fmt, dpi=style.DPI, bbox_inches="tight", metadata=_metadata(fig)
                )
    plt.close(fig)


def _metadata(fig) -> dict:
    """The figure's title as the file's title (PDF readers show it; PNG keeps it as text)."""
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    if not title and fig.axes:
        title = fig.axes[0].get_title()
    return {"Title": title} if title else {}
