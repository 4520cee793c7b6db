"""Boxes (data.bboxes): reading and checking the NIH box table (the real one that `make
real-metadata` fetches), mapping boxes into the shard images, the synthetic generator's true
boxes, the perturbation energy inside a box, and the box overlay of the example plots."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import written
from cxrtransfer import WorkflowError
from cxrtransfer.data.boxes import (
    DEFAULT_PATH,
    ENERGY_COLUMNS,
    HEADER,
    SHA256,
    box_weights,
    check_against_metadata,
    energy_inside,
    energy_table,
    finding_boxes,
    prepare,
    read_boxes,
    read_prepared,
    resolve,
    scale_box,
)
from cxrtransfer.data.nih_wheel import sha256
from cxrtransfer.data.real_metadata import DEFAULT_PATH as METADATA_PATH
from cxrtransfer.data.shards import decode
from cxrtransfer.data.synthetic import BOXED, SyntheticSpec, _patient_anatomy, generate, render
from cxrtransfer.evaluate import examples as plots_mod
from matplotlib.patches import Rectangle
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / DEFAULT_PATH


# ----------------------------------------------------------------------------------------------
# The real box table
# ----------------------------------------------------------------------------------------------


def test_real_box_file_reads_and_matches_the_real_metadata():
    # make test fetches it (a prerequisite): missing means a broken setup, not a skip
    assert REAL.is_file(), f"{REAL} is missing: run `make real-metadata` first"
    assert sha256(REAL) == SHA256
    with gzip.open(REAL, "rt") as f:
        assert f.readline().strip() == HEADER
    names = pd.read_csv(REAL, usecols=["Image Index"], dtype=str)["Image Index"]
    # the real PNGs are 1024 x 1024: every box must lie inside
    df = read_boxes(REAL, sizes={n: (1024, 1024) for n in names})
    assert len(df) == 984 and df["image_index"].nunique() == 880
    counts = df["label"].value_counts()
    assert counts["Pneumothorax"] == 98 and counts["Cardiomegaly"] == 146
    assert counts["Infiltration"] == 123 and "Infiltrate" not in counts  # the file's spelling
    meta = ROOT / METADATA_PATH
    assert meta.is_file(), f"{meta} is missing: run `make real-metadata` first"
    images = pd.read_csv(meta, usecols=["Image Index"], dtype=str)["Image Index"]
    check_against_metadata(df, images, meta)  # every boxed image is a real image
    with pytest.raises(WorkflowError, match="absent from the download's metadata"):
        check_against_metadata(df, images[~images.isin(df["image_index"].head(1))], meta)


# ----------------------------------------------------------------------------------------------
# Reader refusals: each names the file and the column
# ----------------------------------------------------------------------------------------------

GOOD = (
    f"{HEADER}\n"
    "00000001_000.png,Pneumothorax,10.5,20,30,40,,,\n"
    "00000002_000.png,Infiltrate,0,0,64,64,,,\n"
)


def test_reader_reads_the_real_layout_and_maps_infiltrate(tmp_path):
    df = read_boxes(written(tmp_path / "b.csv", GOOD), sizes={"00000001_000.png": (64, 64)})
    assert list(df.columns) == ["image_index", "label", "x", "y", "w", "h"]
    assert df["label"].tolist() == ["Pneumothorax", "Infiltration"]
    assert df.iloc[0][["x", "y", "w", "h"]].tolist() == [10.5, 20.0, 30.0, 40.0]
    gz = tmp_path / "b.csv.gz"
    gz.write_bytes(gzip.compress(GOOD.encode()))
    assert read_boxes(gz).equals(read_boxes(tmp_path / "b.csv"))


@pytest.mark.parametrize(
    ("case", "text", "column"),
    [
        ("missing", GOOD.replace(",h]", ",height"), "h]"),
        ("not a number", GOOD.replace(",30,", ",abc,"), "'w'"),
        ("negative", GOOD.replace(",10.5,", ",-1,"), "'Bbox [x'"),
        ("zero size", GOOD.replace(",30,40,", ",30,0,"), "'h]'"),
        ("unknown label", GOOD.replace("Pneumothorax", "Collapsed lung"), "'Finding Label'"),
        ("bad name", GOOD.replace("00000001_000.png", "images/1.png"), "'Image Index'"),
        (
            "twice",
            GOOD + "00000001_000.png,Pneumothorax,1,1,2,2,,,\n",
            "'Image Index' and 'Finding Label'",
        ),
        ("outside", GOOD.replace(",10.5,20,30,", ",40,20,30,"), "'Bbox [x' and 'w'"),
    ],
)
def test_reader_refuses_bad_files_naming_file_and_column(tmp_path, case, text, column):
    path = written(tmp_path / "boxes.csv", text)
    with pytest.raises(WorkflowError) as e:
        read_boxes(path, sizes={"00000001_000.png": (64, 64), "00000002_000.png": (64, 64)})
    msg = str(e.value)
    assert str(path) in msg and column in msg and "data.bboxes" in msg, (case, msg)


def test_missing_file_and_unknown_images_are_refused(tmp_path):
    with pytest.raises(WorkflowError, match=r"data\.bboxes '.*nope\.csv': the file does not"):
        read_boxes(tmp_path / "nope.csv")
    df = read_boxes(written(tmp_path / "b.csv", GOOD))
    with pytest.raises(WorkflowError) as e:
        check_against_metadata(df, ["00000001_000.png"], "meta.csv")
    msg = str(e.value)
    assert "b.csv" in msg and "'Image Index'" in msg and "00000002_000.png" in msg
    assert "meta.csv" in msg


def test_resolve(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    assert resolve({"source": "synthetic", "bboxes": "auto"}, dl) == str(dl / "BBox_List_2017.csv")
    assert resolve({"source": "kaggle", "bboxes": "auto"}, dl) is None  # no file: no boxes
    (dl / "BBox_List_2017.csv").write_text(GOOD)
    assert resolve({"source": "kaggle", "bboxes": "auto"}, dl) == str(dl / "BBox_List_2017.csv")
    assert resolve({"source": "kaggle", "bboxes": "none"}, dl) is None
    with pytest.raises(WorkflowError, match=r"data\.bboxes '.*missing\.csv'"):
        resolve({"source": "kaggle", "bboxes": str(tmp_path / "missing.csv")}, dl)


# ----------------------------------------------------------------------------------------------
# Scaling into the shard images
# ----------------------------------------------------------------------------------------------


def test_scale_box_by_hand():
    # a 1000 x 800 (width x height) PNG resized to 64 x 64: x/w scale by 0.064, y/h by 0.08
    assert scale_box((100, 200, 300, 400), (1000, 800), 64) == pytest.approx(
        (6.4, 16.0, 19.2, 32.0)
    )
    assert scale_box((0, 0, 1024, 1024), (1024, 1024), 224) == pytest.approx((0, 0, 224, 224))


def test_scale_box_matches_how_shards_resize(tmp_path):
    """A bright rectangle at a known place in a non-square PNG: after shards.decode the change
    it makes lies inside the scaled box (up to the bilinear blur of its edge)."""
    w, h, size = 300, 200, 60
    box = (90, 40, 120, 100)  # x, y, w, h in PNG pixels
    base = np.full((h, w), 60, np.uint8)
    marked = base.copy()
    marked[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = 220
    Image.fromarray(base).save(tmp_path / "a.png")
    Image.fromarray(marked).save(tmp_path / "b.png")
    a, _ = decode(str(tmp_path / "a.png"), size)
    b, _ = decode(str(tmp_path / "b.png"), size)
    scaled = scale_box(box, (w, h), size)
    assert scaled == pytest.approx((18.0, 12.0, 24.0, 30.0))
    assert energy_inside(a, b, scaled)["energy_inside"] > 0.97
    # a box at the wrong place (e.g. scaled as if the PNG were square) captures much less
    wrong = scale_box(box, (w, w), size)
    assert energy_inside(a, b, wrong)["energy_inside"] < 0.8


# ----------------------------------------------------------------------------------------------
# Energy inside the box
# ----------------------------------------------------------------------------------------------


def test_energy_fraction_properties():
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 230, (32, 32)).astype(np.uint8)
    box = (4.5, 8.0, 10.0, 6.25)  # fractional edges: pixels count by their covered area
    wts = box_weights(box, clean.shape)
    assert wts.sum() == pytest.approx(10.0 * 6.25) and wts.max() == 1.0
    uniform = (clean.astype(int) + 5).astype(np.uint8)
    e = energy_inside(clean, uniform, box)
    assert e["energy_inside"] == pytest.approx(10.0 * 6.25 / 32**2)
    assert e["area_share"] == pytest.approx(10.0 * 6.25 / 32**2) and e["ratio"] == pytest.approx(1)
    assert e["l2"] == pytest.approx(np.sqrt(32 * 32 * (5 / 255) ** 2))
    inside = clean.copy()
    inside[9:14, 6:14] += 7  # wholly covered pixels of the box
    assert energy_inside(clean, inside, box)["energy_inside"] == pytest.approx(1.0)
    outside = clean.copy()
    outside[20:, 20:] -= 3
    assert energy_inside(clean, outside, box)["energy_inside"] == 0.0
    assert np.isnan(energy_inside(clean, clean, box)["energy_inside"])
    with pytest.raises(WorkflowError, match="2-D"):
        energy_inside(clean, clean[:-1], box)


def test_energy_table_rows_only_for_boxed_images():
    clean = np.zeros((3, 16, 16), np.uint8)
    adv = clean + 4
    boxes = {"b.png": (0, 0, 512, 256, 1024, 1024)}  # the top-left quarter... of width, half
    t = energy_table(["a.png", "b.png", "c.png"], clean, adv, [0, 1, 1], "Pneumothorax", boxes, 16)
    assert list(t.columns) == ENERGY_COLUMNS and t["image_index"].tolist() == ["b.png"]
    r = t.iloc[0]
    assert (r.box_x, r.box_y, r.box_w, r.box_h) == (0, 0, 8, 4)
    assert r.energy_inside == pytest.approx(32 / 256) and r.ratio == pytest.approx(1)
    none = energy_table(["a.png"], clean[:1], adv[:1], [0], "Pneumothorax", {}, 16)
    assert list(none.columns) == ENERGY_COLUMNS and len(none) == 0


# ----------------------------------------------------------------------------------------------
# Synthetic boxes: the true box of the drawn finding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("finding", BOXED)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_box_holds_the_drawn_finding(finding, seed):
    """signal 0 draws the same random numbers but no finding: the difference of the two images
    is the finding's own signal, and the box holds (nearly) all its energy."""
    anatomy = _patient_anatomy(np.random.default_rng([seed, 0]))
    boxes = {}
    with_finding = render({finding}, anatomy, np.random.default_rng(seed), 96, 2.0, boxes=boxes)
    without = render({finding}, anatomy, np.random.default_rng(seed), 96, 0.0)
    plain = render({finding}, anatomy, np.random.default_rng(seed), 96, 2.0)
    assert np.array_equal(with_finding, plain)  # asking for boxes does not change the image
    x, y, w, h = boxes[finding]
    assert 0 < w * h < 0.5 * 96 * 96
    e = energy_inside(without, with_finding, (x, y, w, h))
    assert e["energy_inside"] > 0.99 and e["ratio"] > 2


def _spec(**kw):
    return SyntheticSpec.from_config(
        dict(
            seed=5,
            n_patients=30,
            max_followups=3,
            image_size=48,
            prevalence={"Pneumothorax": 0.6, "Cardiomegaly": 0.6},
            **kw,
        )
    )


def test_synthetic_box_file_fraction_and_determinism(tmp_path):
    counts = generate(tmp_path / "a", _spec())
    generate(tmp_path / "b", _spec())
    box_csv = (tmp_path / "a" / "BBox_List_2017.csv").read_bytes()
    assert box_csv == (tmp_path / "b" / "BBox_List_2017.csv").read_bytes()  # seeded
    meta = pd.read_csv(tmp_path / "a" / "Data_Entry_2017.csv", dtype=str, index_col=False)
    names = meta["Image Index"]
    boxes = read_boxes(tmp_path / "a" / "BBox_List_2017.csv", sizes={n: (48, 48) for n in names})
    check_against_metadata(boxes, names, "Data_Entry_2017.csv")
    labels = dict(zip(names, meta["Finding Labels"], strict=True))
    assert all(r.label in labels[r.image_index].split("|") for r in boxes.itertuples())
    n_pos = counts["Pneumothorax"] + counts["Cardiomegaly"]
    assert 0.05 < len(boxes) / n_pos < 0.4  # box_fraction 0.2 of the boxable findings
    # every finding boxed, or none: only the box file changes, never an image
    generate(tmp_path / "all", _spec(box_fraction=1.0))
    generate(tmp_path / "none", _spec(box_fraction=0.0))
    assert len(read_boxes(tmp_path / "all" / "BBox_List_2017.csv")) == n_pos
    assert len(read_boxes(tmp_path / "none" / "BBox_List_2017.csv")) == 0
    for png in (tmp_path / "a").glob("images_*/images/*.png"):
        rel = png.relative_to(tmp_path / "a")
        assert png.read_bytes() == (tmp_path / "none" / rel).read_bytes()
    for f in ("Data_Entry_2017.csv", "test_list.txt", "train_val_list.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "all" / f).read_bytes()


def test_prepare_checks_against_the_download(tmp_path):
    dl = tmp_path / "dl"
    generate(dl, _spec(box_fraction=1.0))
    out = prepare(dl / "BBox_List_2017.csv", dl, dl, tmp_path / "boxes.csv")
    assert len(out) > 0 and set(out["png_width"]) == {48} and set(out["png_height"]) == {48}
    again = read_prepared(tmp_path / "boxes.csv")
    first = again.iloc[0]
    assert finding_boxes(again, first.label)[first.image_index][4:] == (48, 48)
    # boxes in 1024-pixel coordinates do not fit these 48-pixel PNGs
    lines = (dl / "BBox_List_2017.csv").read_text().splitlines()
    name, label, *_ = lines[1].split(",")
    lines[1] = f"{name},{label},1000,1000,24,24,,,"
    big_path = written(tmp_path / "big.csv", "\n".join(lines) + "\n")
    with pytest.raises(WorkflowError, match="past the right edge"):
        prepare(big_path, dl, dl, tmp_path / "x.csv")
    stranger = written(tmp_path / "s.csv", f"{HEADER}\n09999999_000.png,Pneumothorax,1,1,2,2,,,\n")
    with pytest.raises(WorkflowError, match="absent from the download's metadata"):
        prepare(stranger, dl, dl, tmp_path / "y.csv")


# ----------------------------------------------------------------------------------------------
# The example plot draws the box
# ----------------------------------------------------------------------------------------------


def test_example_plot_draws_the_box(tmp_path, monkeypatch):
    figs = []
    real_save = plots_mod._save
    monkeypatch.setattr(
        plots_mod, "_save", lambda fig, *out: (figs.append(fig), real_save(fig, *out))
    )
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 255, (2, 24, 24)).astype(np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-3, 4, clean.shape), 0, 255).astype(np.uint8)
    box = (3.0, 5.0, 10.0, 8.0)
    out = tmp_path / "ex.png"
    plots_mod.plot_examples(
        clean,
        adv,
        [1, 0],
        [0.9, 0.1],
        [0.2, 0.8],
        ["a.png", "b.png"],
        "t",
        out,
        boxes=[box, None],
        box_finding="Pneumothorax",
        energy=[0.4, None],
    )
    assert out.is_file()
    fig = figs[0]
    image_axes = [ax for ax in fig.axes if ax.images][:6]  # 2 rows x 3 panels
    rects = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in image_axes]
    assert [len(r) for r in rects] == [1, 1, 1, 0, 0, 0]  # the first image has the box
    for (r,) in rects[:3]:
        # imshow centres pixel j at j: the box's edges are half a pixel before
        assert r.get_xy() == (2.5, 4.5) and (r.get_width(), r.get_height()) == (10.0, 8.0)
    assert "energy in box 40%" in image_axes[2].get_title()
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "Pneumothorax box" in texts and "1 of 2 example image(s)" in texts
    assert not fig.legends  # the box is explained in the footnote (a legend overlapped the title)
    # without boxes: no rectangle, no box caption
    figs.clear()
    plots_mod.plot_examples(clean, adv, [1, 0], [0.9, 0.1], [0.2, 0.8], ["a", "b"], "t", out)
    assert not any(isinstance(p, Rectangle) for ax in figs[0].axes[:6] for p in ax.patches)
    assert not any("box" in t.get_text() for t in figs[0].texts)


# ----------------------------------------------------------------------------------------------
# The energy table of a cell covers every boxed image of its set (issue 24, item 6)
# ----------------------------------------------------------------------------------------------


class _Attrs(dict):
    """What a rule script reads of ``snakemake.input`` / ``params`` / ...: attributes, ``get``."""

    __getattr__ = dict.__getitem__


# one test shard of 8 images at 16 px: class 0 = images 0-3, class 1 = images 4-7; image 4 is
# the most confidently flipped positive, 6 and 7 are the positives with a Cardiomegaly box
# (neither flipped, so the old selection by flip/perturbation never draws them)
N_IMG, SIZE = 8, 16
NAMES = [f"0000000{i}_000.png" for i in range(N_IMG)]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
CLEAN_P = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6])
ADV_P = np.array([0.9, 0.3, 0.35, 0.45, 0.1, 0.7, 0.65, 0.55])
BOX_PNG = (0, 0, 16, 16, 32, 32)  # x, y, w, h, PNG width, height: the shard's top-left 8 x 8


def _plant_cell(tmp_path, box_rows):
    """The inputs of one plot_cell job as the workflow writes them (shard, attack cache,
    prediction files with their config record, metrics.json, the checked box table)."""
    import h5py
    from cxrtransfer.config import runconfig
    from cxrtransfer.data.adversarial_cache import perturbation_norms, write_cache
    from cxrtransfer.data.boxes import PREPARED_COLUMNS

    rng = np.random.default_rng(7)
    clean = rng.integers(40, 200, (N_IMG, SIZE, SIZE)).astype(np.uint8)
    delta = np.zeros(clean.shape, np.int16)
    delta[:6] = rng.choice([-2, 2], (6, SIZE, SIZE))  # unboxed images: everywhere
    delta[6, :8, :8] = 3  # boxed image 6: only inside its box (energy inside = 1)
    delta[7, 8:, 8:] = 1  # boxed image 7: only outside (energy inside = 0), the smaller one
    adv = (clean + delta).astype(np.uint8)
    l2, linf = perturbation_norms(clean, adv)
    pid = np.arange(N_IMG, dtype=np.int32)
    shard = tmp_path / "shards" / "test" / "000.h5"
    shard.parent.mkdir(parents=True)
    with h5py.File(shard, "w") as f:
        f["images"] = clean
        f["labels"] = LABELS.astype(np.int8)
        f["image_index"] = np.array(NAMES, dtype="S")
        f["patient_id"] = pid
    attacks = tmp_path / "attacks" / "set"
    data = dict(
        images=adv,
        image_index=NAMES,
        patient_id=pid,
        labels=LABELS.astype(np.int8),
        source_clean_prob=CLEAN_P.astype(np.float32),
        source_adv_prob=ADV_P.astype(np.float32),
        l2=l2,
        linf=linf,
    )
    write_cache(attacks / "000.h5", data, {"source_checkpoint_sha256": "s"})
    record = {runconfig.RAN_WITH: "c0ffee", runconfig.PLANNED: "c0ffee"}
    common = dict(image_index=NAMES, patient_id=pid, label=LABELS, checkpoint_sha256="t")
    pd.DataFrame({**common, "prob": CLEAN_P, **record}).to_csv(tmp_path / "clean.csv", index=False)
    pd.DataFrame(
        {
            **common,
            "prob": ADV_P,
            **record,
            "source_clean_prob": CLEAN_P,
            "source_adv_prob": ADV_P,
            "l2": l2,
            "linf": linf,
            "source_checkpoint_sha256": "s",
        }
    ).to_csv(tmp_path / "adv.csv", index=False)
    (tmp_path / "metrics.json").write_text('{"threshold": 0.5}')
    pd.DataFrame(box_rows, columns=PREPARED_COLUMNS).to_csv(tmp_path / "boxes.csv", index=False)
    out = tmp_path / "plots"
    return _Attrs(
        input=_Attrs(
            boxes=str(tmp_path / "boxes.csv"),
            clean=str(tmp_path / "clean.csv"),
            adv=str(tmp_path / "adv.csv"),
            target_metrics=str(tmp_path / "metrics.json"),
            shards=[str(shard)],
            attacks=str(attacks),
        ),
        output=_Attrs(
            roc=str(out / "roc.png"),
            roc_pdf=str(out / "roc.pdf"),
            examples=str(out / "ex.png"),
            examples_pdf=str(out / "ex.pdf"),
            boxes=str(out / "ex_boxes.csv"),
        ),
        params=_Attrs(box_finding="Cardiomegaly", kind="cell", norm="linf", per_class=1, code="x"),
        wildcards=_Attrs(target="t", attack="pgd", eps="8", source="s", data_task="cardiomegaly"),
        log=[],
        threads=1,
    )


def _run_plot_cell(sm, monkeypatch):
    """Run the rule's script workflow_scripts/plots.py itself on ``sm`` (run_main, which only
    adds the log redirection and the job's config check, calls its main directly); returns
    the figures it saved."""
    import runpy

    from cxrtransfer.config import job

    figs = []
    real_save = plots_mod._save
    monkeypatch.setattr(
        plots_mod, "_save", lambda fig, *out: (figs.append(fig), real_save(fig, *out))
    )
    monkeypatch.setattr(job, "run_main", lambda main, snakemake: main(snakemake))
    runpy.run_path(str(ROOT / "workflow_scripts" / "plots.py"), {"snakemake": sm}, "plot_cell")
    return figs


def test_the_energy_table_has_every_boxed_image_of_the_set(tmp_path, monkeypatch):
    boxed = [(NAMES[i], "Cardiomegaly", *BOX_PNG) for i in (6, 7)]
    other = [(NAMES[4], "Pneumothorax", *BOX_PNG)]  # another finding's box: not this task's
    sm = _plant_cell(tmp_path, boxed + other)
    figs = _run_plot_cell(sm, monkeypatch)
    table = pd.read_csv(sm.output.boxes)
    assert list(table.columns) == ENERGY_COLUMNS
    # a row per boxed image of the set, drawn or not (today's code: only the drawn examples)
    assert table["image_index"].tolist() == [NAMES[6], NAMES[7]]
    assert (table["finding"] == "Cardiomegaly").all() and (table["label"] == 1).all()
    assert table["energy_inside"].tolist() == pytest.approx([1.0, 0.0])
    assert table["area_share"].tolist() == pytest.approx([0.25, 0.25])
    assert (table[["box_x", "box_y", "box_w", "box_h"]].to_numpy() == [0, 0, 8, 8]).all()
    # the plot prefers boxed images: of class 1 (one example per class) it draws the more
    # perturbed boxed image, not the most flipped unboxed one; the other boxed one is only in
    # the table
    assert table["in_example_plot"].tolist() == [True, False]
    fig = figs[-1]
    rows = [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.images][::3]
    assert rows == [NAMES[0], NAMES[6]]
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "1 of 2 example image(s) have one" in texts
    assert "2 of the set's 8 images have one" in texts


def test_a_set_without_boxed_images_keeps_a_header_only_table(tmp_path, monkeypatch):
    sm = _plant_cell(tmp_path, [(NAMES[4], "Pneumothorax", *BOX_PNG)])
    figs = _run_plot_cell(sm, monkeypatch)
    table = pd.read_csv(sm.output.boxes)
    assert list(table.columns) == ENERGY_COLUMNS and len(table) == 0
    texts = " ".join(t.get_text() for t in figs[-1].texts)
    assert "0 of 2 example image(s) have one." in texts and "of the set's" not in texts
    # the examples are then the ones picked without preference: class 1's most flipped image
    rows = [ax.get_ylabel().split("\n")[0] for ax in figs[-1].axes if ax.images][::3]
    assert rows == [NAMES[0], NAMES[4]]


def test_select_examples_prefers_the_given_images():
    from cxrtransfer.evaluate.examples import select_examples

    args = (LABELS, CLEAN_P, ADV_P, [1, 1, 1, 1, 1, 1, 3, 2])
    assert select_examples(*args, 1) == [0, 4]
    prefer = np.zeros(N_IMG, bool)
    prefer[[6, 7]] = True
    # the preferred first (their own flip / perturbation rankings), the rest fill up
    assert select_examples(*args, 1, prefer=prefer) == [0, 6]
    assert select_examples(*args, 3, prefer=prefer) == [0, 1, 2, 6, 7, 4]
    assert select_examples(*args, 1, prefer=np.zeros(N_IMG, bool)) == [0, 4]
    with pytest.raises(WorkflowError, match="differ in length"):
        select_examples(*args, 1, prefer=prefer[:3])
