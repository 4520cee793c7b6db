"""The look every figure shares: a colour-blind-safe palette, fonts, resolution and layout.

Palette: Okabe & Ito (2008), "Color Universal Design", eight colours distinguishable with
every common colour-vision deficiency (black last, yellow late: it is faint on white). Heatmaps
use ``cividis`` (sequential, designed for colour-vision deficiencies) and the perturbation
panels ``RdBu_r`` (ColorBrewer's RdBu, marked colour-blind safe). Lines also differ by marker,
so no distinction rests on colour alone.
"""

from __future__ import annotations

from itertools import cycle, islice

import matplotlib

# Okabe-Ito: orange, sky blue, bluish green, vermillion, blue, reddish purple, yellow, black
PALETTE = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#D55E00",
    "#0072B2",
    "#CC79A7",
    "#F0E442",
    "#000000",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CLEAN_COLOUR = "#0072B2"  # blue: clean images
ADV_COLOUR = "#D55E00"  # vermillion: adversarial images
REFERENCE_COLOUR = "0.45"  # grey: chance and other reference lines
SEQUENTIAL_CMAP = "cividis"
DIVERGING_CMAP = "RdBu_r"
MISSING_COLOUR = "0.85"  # undefined heatmap cells
BOX_COLOUR = "#E69F00"  # the finding's box on the images
BOX_DELTA_COLOUR = "#009E73"  # the box on the perturbation panel
DPI = 200  # PNG resolution (the PDF is vector)
BAND_ALPHA = 0.2  # confidence bands

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,  # TrueType in the PDF: its text stays text (searchable, editable)
    "ps.fonttype": 42,
    "svg.fonttype": "none",
}


def apply() -> None:
    """Set the shared look for the figures made after it (matplotlib's global rcParams)."""
    matplotlib.rcParams.update(RC)


def colours(n: int) -> list[str]:
    """``n`` colours of the palette (repeated when more are asked for than it has)."""
    return list(islice(cycle(PALETTE), n))


def markers(n: int) -> list[str]:
    return list(islice(cycle(MARKERS), n))
