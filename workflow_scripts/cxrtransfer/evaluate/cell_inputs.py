"""Checked inputs of a cell: the clean and adversarial prediction tables, aligned by image.

Every bad input stops with a WorkflowError that names the problem (``align_inputs``), and the
settings of ``evaluate.cells.compute_cell`` are checked before any work (``check_settings``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.metrics.bootstrap import CLUSTERS

# The columns compute_cell reads of the clean and the adversarial predictions.
CLEAN_COLUMNS = ("image_index", "patient_id", "label", "prob")
ADV_COLUMNS = ("image_index", "label", "prob", "source_clean_prob", "source_adv_prob", "l2", "linf")
# Optional in the adversarial predictions; checked against the clean ones when present.
ADV_OPTIONAL_COLUMNS = ("patient_id",)


def _require_columns(df, columns, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise WorkflowError(f"{what} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise WorkflowError(
            f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})."
        )


def _preview(items, k: int = 5) -> str:
    items = sorted(items)
    more = f", ... ({len(items) - k} more)" if len(items) > k else ""
    return ", ".join(items[:k]) + more


def _numeric(series: pd.Series, what: str, lo: float | None, hi: float | None) -> np.ndarray:
    x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x)
    if lo is not None:
        bad |= x < lo
    if hi is not None:
        bad |= x > hi
    if bad.any():
        rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
        raise WorkflowError(
            f"{what}: {int(bad.sum())} value(s) are not finite numbers{rng} "
            f"(first: {series.iloc[int(np.argmax(bad))]!r})."
        )
    return x


def _patient_ids(series: pd.Series, what: str) -> np.ndarray:
    x = _numeric(series, what, None, None)
    if not np.all(x == np.round(x)):
        bad = series[x != np.round(x)]
        raise WorkflowError(
            f"{what} must be integers; found {bad.iloc[0]!r} ({len(bad)} value(s))."
        )
    return x.astype(np.int64)


def align_inputs(clean: pd.DataFrame, adv: pd.DataFrame) -> dict:
    """Check clean and adversarial predictions and align them by image_index (sorted).

    Raises WorkflowError for: missing columns (``patient_id`` is required in the clean table and
    optional in the adversarial one), an empty adversarial set, duplicate image_index, different
    image sets (naming what is missing / extra and how many), labels other than 0/1, labels or
    patient_id that differ between the two tables, non-integer patient_id, probabilities outside
    [0, 1] or not finite, and negative or non-finite perturbation sizes.
    """
    _require_columns(clean, CLEAN_COLUMNS, "clean predictions")
    _require_columns(adv, ADV_COLUMNS, "adversarial predictions")
    if len(adv) == 0:
        raise WorkflowError(
            "The adversarial set is empty: no adversarial predictions to evaluate. Check that the "
            "attack stage stored images for this cell."
        )
    c = clean.assign(image_index=clean["image_index"].astype(str))
    d = adv.assign(image_index=adv["image_index"].astype(str))
    for df, what in ((c, "clean predictions"), (d, "adversarial predictions")):
        dup = df["image_index"][df["image_index"].duplicated()].unique()
        if len(dup):
            raise WorkflowError(
                f"{what}: {len(dup)} image_index value(s) occur more than once: {_preview(dup)}."
            )
    cs, ds = set(c["image_index"]), set(d["image_index"])
    if cs != ds:
        missing, extra = cs - ds, ds - cs
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} clean image(s) missing from the adversarial set: "
                f"{_preview(missing)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} adversarial image(s) not in the clean set: {_preview(extra)}"
            )
        raise WorkflowError(
            "Clean and adversarial predictions cover different images (" + "; ".join(parts) + ")."
        )
    c = c.sort_values("image_index", kind="stable").reset_index(drop=True)
    d = d.sort_values("image_index", kind="stable").reset_index(drop=True)
    y_clean = _numeric(c["label"], "clean label", 0, 1)
    y_adv = _numeric(d["label"], "adversarial label", 0, 1)
    for y, what in ((y_clean, "clean"), (y_adv, "adversarial")):
        if not np.all((y == 0) | (y == 1)):
            raise WorkflowError(f"{what} labels must be 0 or 1; found {sorted(set(y.tolist()))}.")
    if not np.array_equal(y_clean, y_adv):
        bad = c["image_index"][y_clean != y_adv]
        raise WorkflowError(
            f"Labels differ between clean and adversarial predictions for {len(bad)} image(s): "
            f"{_preview(bad)}."
        )
    patient = _patient_ids(c["patient_id"], "clean patient_id")
    if "patient_id" in d.columns:
        other = _patient_ids(d["patient_id"], "adversarial patient_id")
        if not np.array_equal(patient, other):
            bad = c["image_index"][patient != other]
            raise WorkflowError(
                f"patient_id differs between clean and adversarial predictions for {len(bad)} "
                f"image(s): {_preview(bad)}."
            )
    return {
        "image_index": c["image_index"].to_numpy(),
        "patient_id": patient,
        "label": y_clean.astype(np.int64),
        "prob": _numeric(c["prob"], "clean prob", 0, 1),
        "adv_prob": _numeric(d["prob"], "adversarial prob", 0, 1),
        "source_clean_prob": _numeric(d["source_clean_prob"], "source_clean_prob", 0, 1),
        "source_adv_prob": _numeric(d["source_adv_prob"], "source_adv_prob", 0, 1),
        "l2": _numeric(d["l2"], "l2", 0, None),
        "linf": _numeric(d["linf"], "linf", 0, None),
    }


def check_settings(t_target, t_source, n_boot, confidence, cluster) -> None:
    for name, t in (("t_target", t_target), ("t_source", t_source)):
        if not isinstance(t, int | float | np.number) or not math.isfinite(t):
            raise WorkflowError(f"{name} must be a finite number, got {t!r}.")
    if int(n_boot) != n_boot or n_boot < 0:
        raise WorkflowError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    if not 0 < confidence < 1:
        raise WorkflowError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    if cluster not in CLUSTERS:
        raise WorkflowError(f"cluster must be one of {', '.join(CLUSTERS)}; got {cluster!r}.")
