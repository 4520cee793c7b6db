"""The built-in dataset: a small synthetic download with exactly the Kaggle layout.

``generate(out_dir, ...)`` writes, deterministically from a seed:

- ``Data_Entry_2017.csv`` with the real header and the real file's trailing comma,
- ``BBox_List_2017.csv`` (the real layout: for a seeded ``box_fraction`` of the Cardiomegaly and
  Pneumothorax findings, the true pixel box of the drawn finding), ``train_val_list.txt`` and
  ``test_list.txt`` (patient-wise split),
- ``images_001/images/*.png`` ... 8-bit grayscale PNGs (a few RGBA, as in the real set).

Images are drawn chest-like: a thorax, two lungs with rib texture, a cardiac silhouette. Each
finding adds a visual signal a CNN can learn: Cardiomegaly enlarges the cardiac silhouette,
Pneumothorax darkens a lung apex, removes its texture and draws a pleural line, Effusion
blunts a costophrenic angle, Infiltration adds patchy opacities, Mass/Nodule add round
opacities. Patients vary (anatomy, exposure) and findings persist across follow-ups.
This is a demonstration dataset: numbers obtained with it are not clinical results.

With ``metadata`` (a real ``Data_Entry_2017.csv`` or the 2020 revision, see
``real_metadata``), the images drawn are exactly the table's rows (all, or ``max_patients``
whole patients drawn with the seed): real names, patients, follow-ups, labels, ages, sexes and
views, so patient structure, label co-occurrence and class imbalance are the real ones. The
lists then split patient-wise by ``test_fraction`` (the official lists are not public apart
from the image download). Each image depends only on (seed, patient, image name), so a subset
holds the same images as the whole table.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtransfer import LABELS, NO_FINDING, WorkflowError
from cxrtransfer.config.schema import defaults
from cxrtransfer.core.logs import LOG, Progress
from cxrtransfer.data.expert_labels import FINDINGS, write_combined
from cxrtransfer.data.real_metadata import (
    read_metadata,
    read_text_table,
    select_patients,
    split_test_patients,
)

CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# findings whose drawn region the generator boxes in BBox_List_2017.csv (the true box)
BOXED = ("Cardiomegaly", "Pneumothorax")
# keys of data.synthetic that a metadata file replaces
METADATA_DECIDES = ("n_patients", "max_followups", "no_finding_fraction", "prevalence")


@dataclass
class SyntheticSpec:
    """Settings of the built-in dataset; defaults and documentation in the config schema
    (``data.synthetic``): build it with ``from_config``."""

    seed: int
    n_patients: int
    max_followups: int
    image_size: int
    images_per_folder: int
    test_fraction: float
    no_finding_fraction: float
    prevalence: dict
    rgba_fraction: float
    signal: float
    metadata: str | None = None
    max_patients: int | None = None
    box_fraction: float = 0.2

    @classmethod
    def from_config(cls, cfg: dict) -> SyntheticSpec:
        # the expert labels are written by their own rule from the finished download
        cfg = {k: v for k, v in cfg.items() if k != "expert_labels"}
        known = cls.__dataclass_fields__
        unknown = set(cfg) - set(known)
        if unknown:
            raise WorkflowError(f"Unknown data.synthetic keys: {sorted(unknown)}")
        default = defaults("data", "synthetic")
        if cfg.get("metadata"):
            # a validated config holds every default: only other values are a contradiction
            clash = sorted(k for k in METADATA_DECIDES if k in cfg and cfg[k] != default[k])
            if clash:
                raise WorkflowError(
                    f"data.synthetic: {clash} cannot be combined with metadata (the patients, "
                    "follow-ups and labels come from the metadata file); remove them, or use "
                    "max_patients to draw a subset of patients."
                )
        elif cfg.get("max_patients") is not None:
            raise WorkflowError(
                "data.synthetic.max_patients selects patients of a metadata file: set "
                "data.synthetic.metadata too, or use n_patients."
            )
        return cls(**{**default, **cfg})

    def label_prevalence(self) -> dict:
        prev = {
            "Pneumothorax": 0.3,
            "Cardiomegaly": 0.3,
            "Effusion": 0.2,
            "Infiltration": 0.2,
            "Atelectasis": 0.08,
            "Mass": 0.05,
            "Nodule": 0.05,
        }
        prev.update(self.prevalence or {})
        for k in prev:
            if k not in LABELS:
                raise WorkflowError(f"data.synthetic.prevalence: unknown label '{k}'")
        return {k: v for k, v in prev.items() if v > 0}


def _soft_ellipse(yy, xx, cy, cx, ry, rx, edge=0.08):
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 + edge - d) / (2 * edge), 0.0, 1.0)


def _mask_box(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int] | None:
    """The pixel box (x, y, w, h; pixel (i, j) spans [j, j+1) x [i, i+1)) of ``mask``'s
    nonzero pixels, grown by ``pad`` pixels and kept inside the image; None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    h, w = mask.shape
    y0, y1 = max(0, int(rows.min()) - pad), min(h, int(rows.max()) + 1 + pad)
    x0, x1 = max(0, int(cols.min()) - pad), min(w, int(cols.max()) + 1 + pad)
    return x0, y0, x1 - x0, y1 - y0


def render(
    labels: set[str],
    anatomy: dict,
    rng: np.random.Generator,
    size: int,
    signal: float = 1.0,
    boxes: dict | None = None,
) -> np.ndarray:
    """Draw one chest-like radiograph (uint8, size x size) showing ``labels``.

    ``signal`` scales how visible the findings are (1 = the default, subtle; 2 = obvious).
    ``boxes``: a dict that receives, per finding in ``BOXED`` that is drawn, the pixel box
    (x, y, w, h) of everything the finding changes (Cardiomegaly: the enlarged cardiac
    silhouette; Pneumothorax: the collapsed region and its pleural line). It is computed from
    the drawn masks and draws no random numbers: the image is the same with or without it.
    """
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    img = np.full((s, s), 0.08, np.float32)
    # thorax (soft tissue)
    img += 0.35 * _soft_ellipse(yy, xx, 0.55, 0.5, 0.5, 0.44, 0.1)
    # lungs: dark, with rib texture
    lung_ry, lung_rx = anatomy["lung_ry"], anatomy["lung_rx"]
    cy = 0.52
    lungs = []
    for side, cx in (("R", 0.5 - anatomy["lung_sep"]), ("L", 0.5 + anatomy["lung_sep"])):
        m = _soft_ellipse(yy, xx, cy, cx, lung_ry, lung_rx, 0.06)
        lungs.append((side, cx, m))
        img -= 0.28 * m
    ribs = 0.05 * (0.5 + 0.5 * np.sin((yy * anatomy["rib_freq"] + 0.15 * np.abs(xx - 0.5)) * 6.283))
    texture = 0.03 * rng.standard_normal((s, s)).astype(np.float32)
    lung_mask = np.maximum(lungs[0][2], lungs[1][2])
    img += lung_mask * (ribs + texture)
    # mediastinum and heart (image right = patient's left)
    img += 0.3 * _soft_ellipse(yy, xx, 0.45, 0.5, 0.35, 0.06, 0.15)
    heart_w = anatomy["heart_w"] * (
        1 + signal * rng.uniform(0.25, 0.6) if "Cardiomegaly" in labels else 1.0
    )
    heart_h = anatomy["heart_h"] * (rng.uniform(1.0, 1.2) if "Cardiomegaly" in labels else 1.0)
    heart = _soft_ellipse(yy, xx, 0.66, 0.53, heart_h, heart_w, 0.1)
    img += 0.42 * heart
    if boxes is not None and "Cardiomegaly" in labels:
        boxes["Cardiomegaly"] = _mask_box(heart > 0)
    if "Pneumothorax" in labels:
        side, cx, m = lungs[int(rng.integers(0, 2))]
        depth = rng.uniform(0.2, 0.5)  # fraction of the lung height that collapsed
        top = cy - lung_ry
        region = m * (yy < top + depth * 2 * lung_ry)
        outer = np.abs(xx - 0.5) > np.abs(cx - 0.5) - lung_rx * rng.uniform(0.0, 0.4)
        region = region * outer
        # the collapsed part loses its lung texture and darkens; a faint pleural line remains
        dark = min(1.0, signal * rng.uniform(0.4, 0.8))
        flat = 0.05 + 0.02 * rng.standard_normal((s, s))
        img = img * (1 - dark * region) + dark * region * flat
        edge = np.abs(np.gradient(region.astype(np.float32), axis=1))
        edge += np.abs(np.gradient(region.astype(np.float32), axis=0))
        img += signal * rng.uniform(0.1, 0.3) * np.clip(edge * 3, 0, 1)
        if boxes is not None:  # np.gradient reaches one pixel beyond the region
            boxes["Pneumothorax"] = _mask_box(region > 0, pad=1)
    if "Effusion" in labels:
        side, cx, m = lungs[int(rng.integers(0, 2))]
        level = cy + lung_ry * rng.uniform(0.45, 0.75)
        img += 0.25 * m * (yy > level)
    if "Infiltration" in labels or "Consolidation" in labels or "Pneumonia" in labels:
        for _ in range(int(rng.integers(2, 5))):
            py, px = rng.uniform(0.35, 0.75), rng.choice([0.33, 0.67]) + rng.uniform(-0.07, 0.07)
            img += 0.15 * _soft_ellipse(
                yy, xx, py, px, rng.uniform(0.04, 0.09), rng.uniform(0.03, 0.08), 0.5
            )
    if "Mass" in labels or "Nodule" in labels:
        r = 0.06 if "Mass" in labels else 0.025
        py, px = rng.uniform(0.3, 0.7), rng.choice([0.32, 0.68])
        img += 0.3 * _soft_ellipse(yy, xx, py, px, r, r, 0.2)
    if "Atelectasis" in labels:
        side, cx, m = lungs[int(rng.integers(0, 2))]
        img += 0.12 * m * (yy > cy + 0.1)
    # exposure and noise
    img = img * anatomy["contrast"] + anatomy["brightness"]
    img += 0.03 * rng.standard_normal((s, s)).astype(np.float32)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def _patient_anatomy(rng: np.random.Generator) -> dict:
    return {
        "lung_ry": rng.uniform(0.27, 0.33),
        "lung_rx": rng.uniform(0.14, 0.17),
        "lung_sep": rng.uniform(0.17, 0.2),
        "rib_freq": rng.uniform(7, 10),
        "heart_w": rng.uniform(0.095, 0.135),
        "heart_h": rng.uniform(0.11, 0.14),
        "contrast": rng.uniform(0.85, 1.15),
        "brightness": rng.uniform(-0.05, 0.08),
    }


def _patient_labels(rng, prev: dict, no_finding_fraction: float, chronic: set) -> list[str]:
    if rng.random() < no_finding_fraction and not chronic:
        return [NO_FINDING]
    labels = set(chronic if rng.random() < 0.8 else ())
    for lab, p in prev.items():
        if rng.random() < p * 0.5:
            labels.add(lab)
    if not labels:
        names = list(prev)
        labels.add(names[int(rng.integers(0, len(names)))])
    return sorted(labels, key=LABELS.index)


def _plan_images(spec: SyntheticSpec, rng) -> tuple[list, set[int]]:
    """Every image to draw (patient, follow-up, age, sex, anatomy, labels, seed) and the test
    patients, from the generator's seeded random stream."""
    prev = spec.label_prevalence()
    patients = list(range(1, spec.n_patients + 1))
    n_test = max(1, int(round(spec.test_fraction * len(patients))))
    test_patients = {int(pid) for pid in rng.permutation(patients)[:n_test]}
    images = []
    for pid in patients:
        anatomy = _patient_anatomy(rng)
        chronic = set()
        if rng.random() > spec.no_finding_fraction:
            # a persistent finding: most of this patient's images show it
            weights = np.array(list(prev.values())) / sum(prev.values())
            chronic.add(list(prev)[int(rng.choice(len(prev), p=weights))])
        n_fu = int(rng.integers(1, spec.max_followups + 1))
        age = int(rng.integers(18, 90))
        sex = "M" if rng.random() < 0.56 else "F"
        for fu in range(n_fu):
            labels = _patient_labels(rng, prev, spec.no_finding_fraction, chronic)
            images.append((pid, fu, age, sex, anatomy, labels, int(rng.integers(0, 2**31 - 1))))
    return images, test_patients


def _draw_png(out: Path, i: int, name: str, labels, anatomy, irng, spec: SyntheticSpec) -> dict:
    """Draw image ``i`` (findings ``labels``) with ``irng`` and save it as ``name`` in its
    images_XXX folder; a fraction ``spec.rgba_fraction`` is saved as RGBA, like real quirks.
    Returns the true boxes of its painted findings (``render``)."""
    # heavy: the Snakefile imports this module at parse time; PIL loads in the download job only
    from PIL import Image

    folder = out / f"images_{i // spec.images_per_folder + 1:03d}" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    boxes: dict = {}
    arr = render(set(labels), anatomy, irng, spec.image_size, spec.signal, boxes=boxes)
    if irng.random() < spec.rgba_fraction:
        rgba = np.stack([arr, arr, arr, np.full_like(arr, 255)], axis=-1)
        Image.fromarray(rgba, mode="RGBA").save(folder / name)
    else:
        Image.fromarray(arr, mode="L").save(folder / name)
    return boxes


def _box_rows(name: str, labels, boxes: dict, irng, fraction: float) -> list:
    """BBox_List rows of one image: the true box of each boxed finding it shows, for a
    ``fraction`` of them. One draw of ``irng`` per such finding, after everything else the
    image draws, so the fraction changes which images get a box and nothing else."""
    rows = []
    for lab in labels:
        if lab in BOXED and irng.random() < fraction and boxes.get(lab):
            rows.append([name, lab, *(f"{v:.4f}" for v in boxes[lab])])
    return rows


def _write_image(out: Path, i: int, image: tuple, spec: SyntheticSpec) -> tuple[list, list]:
    """Draw and save one PNG; return its Data_Entry row and its bounding-box rows."""
    pid, fu, age, sex, anatomy, labels, img_seed = image
    name = f"{pid:08d}_{fu:03d}.png"
    irng = np.random.default_rng(img_seed)
    true_boxes = _draw_png(out, i, name, labels, anatomy, irng, spec)
    view = "PA" if irng.random() < 0.6 else "AP"
    spacing = f"{0.143 * 1024 / spec.image_size:.3f}"
    size = spec.image_size
    row = [name, "|".join(labels), fu, pid, age + fu // 3, sex, view, size, size, spacing, spacing]
    return row, _box_rows(name, labels, true_boxes, irng, spec.box_fraction)


def _write_metadata(out: Path, rows: list, bbox_rows: list, test_patients: set[int]) -> list:
    """The CSVs (with the real files' trailing commas) and the official-style split lists."""
    with open(out / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write(CSV_HEADER + ",\n")
        csv.writer(f, lineterminator=",\n").writerows(rows)  # every line ends with a comma
    with open(out / "BBox_List_2017.csv", "w", newline="") as f:
        f.write(BBOX_HEADER + "\n")
        csv.writer(f, lineterminator=",,,\n").writerows(bbox_rows)
    test = sorted(r[0] for r in rows if r[3] in test_patients)
    train = sorted(r[0] for r in rows if r[3] not in test_patients)
    (out / "test_list.txt").write_text("\n".join(test) + "\n")
    (out / "train_val_list.txt").write_text("\n".join(train) + "\n")
    return test


def metadata_inputs(data: dict) -> dict:
    """Inputs of rule synthetic_download for the config's ``data`` section: ``{"metadata":
    path}`` when the synthetic download draws a metadata table (so a changed table regenerates
    it), else ``{}``. Checks ``data.synthetic`` and that the table exists (at parse time)."""
    if data.get("source", "synthetic") != "synthetic":
        return {}
    spec = SyntheticSpec.from_config(dict(data.get("synthetic") or {}))
    if not spec.metadata:
        return {}
    if not Path(spec.metadata).is_file():
        read_metadata(spec.metadata)  # raises the message saying how to get the table
    return {"metadata": spec.metadata}


def _metadata_row(out: Path, i: int, r, anatomy: dict, spec: SyntheticSpec) -> tuple[list, list]:
    """Draw and save the image of one metadata row; return its Data_Entry row (the table's
    own values, Kaggle 2017 style) and its bounding-box rows."""
    name, pid = r.image_index, int(r.patient_id)
    labels = r.finding_labels.split("|")
    irng = np.random.default_rng([spec.seed, pid, int(name[9:12]), 1])
    true_boxes = _draw_png(out, i, name, labels, anatomy, irng, spec)
    size = spec.image_size
    spacing = f"{0.143 * 1024 / size:.3f}"
    row = [
        name,
        r.finding_labels,
        r.follow_up,
        pid,
        r.age,
        r.sex,
        r.view,
        r.width or size,
        r.height or size,
        r.spacing_x or spacing,
        r.spacing_y or spacing,
    ]
    return row, _box_rows(name, labels, true_boxes, irng, spec.box_fraction)


def _generate_from_metadata(out: Path, spec: SyntheticSpec, meta) -> tuple[list, list, set, int]:
    meta = select_patients(meta, spec.max_patients, spec.seed)
    test_patients = split_test_patients(meta, spec.test_fraction, spec.seed)
    rows, bbox_rows, anatomy = [], [], {}
    progress = Progress(len(meta), "synthetic images (real metadata)", every_seconds=15)
    for i, r in enumerate(meta.itertuples(index=False)):
        pid = int(r.patient_id)
        if pid not in anatomy:
            anatomy[pid] = _patient_anatomy(np.random.default_rng([spec.seed, pid, 0]))
        row, boxes = _metadata_row(out, i, r, anatomy[pid], spec)
        rows.append(row)
        bbox_rows += boxes
        progress.update()
    return rows, bbox_rows, test_patients, len(anatomy)


def generate(out_dir: str | Path, spec: SyntheticSpec) -> dict:
    """Write the synthetic download into ``out_dir`` (replaced if present); return counts."""
    out = Path(out_dir)
    meta = None
    if spec.metadata:
        meta = read_metadata(spec.metadata)  # a bad table fails before anything is deleted
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if meta is not None:
        rows, bbox_rows, test_patients, n_patients = _generate_from_metadata(out, spec, meta)
        test = _write_metadata(out, rows, bbox_rows, test_patients)
        return _counts(out, rows, n_patients, test)
    images, test_patients = _plan_images(spec, np.random.default_rng(spec.seed))
    rows, bbox_rows = [], []
    progress = Progress(len(images), "synthetic images", every_seconds=10)
    for i, image in enumerate(images):
        row, boxes = _write_image(out, i, image, spec)
        rows.append(row)
        bbox_rows += boxes
        progress.update()
    test = _write_metadata(out, rows, bbox_rows, test_patients)
    return _counts(out, rows, spec.n_patients, test)


def _counts(out: Path, rows: list, n_patients: int, test: list) -> dict:
    counts = {"images": len(rows), "patients": n_patients, "test_images": len(test)}
    for lab in [NO_FINDING, *LABELS]:
        counts[lab] = sum(lab in r[1].split("|") for r in rows)
    LOG.info("synthetic download written to %s: %s", out, counts)
    return counts


# ----------------------------------------------------------------------------------------------
# Expert labels of the synthetic download (data.synthetic.expert_labels)
# ----------------------------------------------------------------------------------------------

# The NIH labels behind each expert finding of the Google file, for the drawn "NLP" truth.
EXPERT_FROM_NIH = {
    "Fracture": (),
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Consolidation", "Infiltration", "Pneumonia"),
    "Nodule or mass": ("Nodule", "Mass"),
}


def expert_label_settings(cfg: dict | None) -> dict:
    """``data.synthetic.expert_labels`` with its defaults: fraction, disagreement, seed."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - {"fraction", "disagreement", "seed"}
    if unknown:
        raise WorkflowError(f"Unknown data.synthetic.expert_labels keys: {sorted(unknown)}")
    return {"fraction": 0.5, "disagreement": 0.05, "seed": 0, **cfg}


def write_expert_labels(
    download_dir, out_path, fraction: float, disagreement: float, seed: int = 0
) -> dict:
    """Write expert labels for the synthetic download in Google's combined format.

    A seeded ``fraction`` of the download's images (test and training alike; ``Set Id`` test
    for images of test_list.txt, val otherwise) gets, per expert finding, the drawn label (an
    NIH label of the finding in ``Finding Labels``, see ``EXPERT_FROM_NIH``) flipped with
    probability ``disagreement`` independently per image and finding. Returns counts."""
    download = Path(download_dir)
    meta = read_text_table(download / "Data_Entry_2017.csv", _unreadable)
    test = set((download / "test_list.txt").read_text().split())
    rng = np.random.default_rng([seed, 2019])
    chosen = rng.random(len(meta)) < fraction
    flips = rng.random((len(meta), len(FINDINGS))) < disagreement
    rows, n_flipped = [], 0
    for i, r in enumerate(meta.to_dict("records")):
        if not chosen[i]:
            continue
        labels = set(r["Finding Labels"].split("|"))
        row = dict(r)
        for j, f in enumerate(FINDINGS):
            nlp = bool(labels & set(EXPERT_FROM_NIH[f]))
            expert = nlp != bool(flips[i, j])
            n_flipped += int(flips[i, j])
            row[f] = "YES" if expert else "NO"
        row["Set Id"] = "test" if r["Image Index"] in test else "val"
        rows.append(row)
    write_combined(out_path, rows)
    counts = {"images": len(rows), "test_images": sum(r["Set Id"] == "test" for r in rows)}
    counts["disagreements"] = n_flipped
    LOG.info("synthetic expert labels written to %s: %s", out_path, counts)
    return counts


def _unreadable(path, what: str) -> WorkflowError:
    return WorkflowError(f"{path} {what} Regenerate the synthetic download (delete it and rerun).")
