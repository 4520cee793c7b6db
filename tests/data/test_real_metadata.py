"""The synthetic download drawn for a real ChestX-ray14 metadata table (data.synthetic.metadata):
exactly its rows in the Kaggle layout, the checks of the table, the existing ingest on the
output, and a tiny model trained at the real class imbalance.

Small tables are written here; the real one (resources/nih-metadata/, fetched by `make
real-metadata`, a prerequisite of `make test`) is read by the tests marked below.
"""

import gzip
import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import training_settings
from cxrtransfer import WorkflowError
from cxrtransfer.data.ingest import build_manifest, read_data_entry
from cxrtransfer.data.nih_wheel import sha256
from cxrtransfer.data.real_metadata import DEFAULT_PATH, REAL_COUNTS, SHA256, read_metadata
from cxrtransfer.data.synthetic import CSV_HEADER, SyntheticSpec, generate
from PIL import Image

HEADER_V2020 = CSV_HEADER  # the v2020 file: the same header, no trailing comma, integer ages
FINDINGS = [
    "Pneumothorax",
    "Cardiomegaly",
    "Effusion|Pneumothorax",
    "Cardiomegaly|Effusion",
    "Mass",
]


def _rows(n_patients: int = 40) -> list[list]:
    """Rows of a small, varied table: 1-3 follow-ups (names skip numbers, as the real file's
    do), about half No Finding, findings that persist within a patient."""
    rows = []
    for pid in range(1, n_patients + 1):
        finding = FINDINGS[pid % len(FINDINGS)]
        for k in range(pid % 3 + 1):
            fu = 2 * k + (pid % 2)  # e.g. 00000003_001.png with Follow-up # 0
            labels = "No Finding" if (pid + k) % 2 == 0 else finding
            age, sex, view = 20 + pid + k, "MF"[pid % 2], ("PA", "AP")[k % 2]
            rows.append([f"{pid:08d}_{fu:03d}.png", labels, k, pid, age, sex, view])
    return rows


def write_table(path, rows, header=HEADER_V2020, trailing="", age_fmt="{}", gz=None):
    lines = [header + trailing]
    for name, labels, fu, pid, age, sex, view in rows:
        fields = [name, labels, fu, pid, age_fmt.format(age), sex, view, 2500, 2048]
        fields += ["0.14300000000000002", "0.14300000000000002"]
        lines.append(",".join(map(str, fields)) + trailing)
    text = "\n".join(lines) + "\n"
    if gz if gz is not None else str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def spec(metadata, **kw):
    cfg = dict(metadata=str(metadata), seed=5, image_size=32, images_per_folder=25)
    cfg.update(kw)
    return SyntheticSpec.from_config(cfg)


def test_draws_exactly_the_metadata_rows_in_the_kaggle_layout(tmp_path):
    rows = _rows()
    meta = write_table(tmp_path / "Data_Entry_2017_v2020.csv.gz", rows)
    out = tmp_path / "nih"
    counts = generate(out, spec(meta, test_fraction=0.3))
    lines = (out / "Data_Entry_2017.csv").read_text().splitlines()
    # the Kaggle 2017 file: its header and a comma at the end of every line
    assert lines[0] == CSV_HEADER + ","
    assert all(line.endswith(",") for line in lines)
    df = pd.read_csv(out / "Data_Entry_2017.csv", dtype=str)
    assert "Unnamed: 11" in df.columns
    assert list(df["Image Index"]) == [r[0] for r in rows]
    assert list(df["Finding Labels"]) == [r[1] for r in rows]
    assert list(df["Follow-up #"].astype(int)) == [r[2] for r in rows]
    assert list(df["Patient ID"].astype(int)) == [r[3] for r in rows]
    assert list(df["Patient Age"].astype(int)) == [r[4] for r in rows]
    assert list(df["Patient Gender"]) == [r[5] for r in rows]
    assert list(df["View Position"]) == [r[6] for r in rows]
    assert set(df["OriginalImagePixelSpacing[x"]) == {"0.143"}  # written as Kaggle does
    assert counts["images"] == len(rows) and counts["patients"] == 40
    assert counts["Pneumothorax"] == sum("Pneumothorax" in r[1] for r in rows)
    # images: one PNG per row in images_XXX/images, 25 per folder, the drawn size
    pngs = {p.name: p for p in out.glob("images_*/images/*.png")}
    assert sorted(pngs) == sorted(r[0] for r in rows)
    assert len(list(out.glob("images_*/images"))) == -(-len(rows) // 25)
    assert Image.open(pngs[rows[0][0]]).size == (32, 32)
    # the lists: every row once, patient-wise, about test_fraction of the patients
    test = (out / "test_list.txt").read_text().split()
    train_val = (out / "train_val_list.txt").read_text().split()
    assert sorted(test + train_val) == sorted(r[0] for r in rows)
    pid = {r[0]: r[3] for r in rows}
    assert not {pid[n] for n in test} & {pid[n] for n in train_val}
    assert len({pid[n] for n in test}) == 12  # round(0.3 * 40)
    # the same table and seed give the same download
    generate(tmp_path / "again", spec(meta, test_fraction=0.3))
    for f in ("Data_Entry_2017.csv", "test_list.txt", "BBox_List_2017.csv"):
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes()
    first = pngs[rows[0][0]].relative_to(out)
    assert (out / first).read_bytes() == (tmp_path / "again" / first).read_bytes()


def test_output_ingests_like_the_real_download(tmp_path):
    """The existing ingest (the code path of the real Kaggle download) reads the output."""
    rows = _rows(60)
    out = tmp_path / "nih"
    generate(out, spec(write_table(tmp_path / "meta.csv", rows), test_fraction=0.25))
    entries = read_data_entry(out / "Data_Entry_2017.csv")
    assert list(entries["image_index"]) == [r[0] for r in rows]
    assert list(entries["age"]) == [r[4] for r in rows]
    for label in ("Pneumothorax", "Cardiomegaly"):
        m, rejected, summary = build_manifest(out, label, 0.2, 3)
        assert rejected.empty
        expected = [r[0] for r in rows if label in r[1].split("|") or r[1] == "No Finding"]
        assert sorted(m["image_index"]) == sorted(expected)
        assert summary["positives"].sum() == sum(label in r[1].split("|") for r in rows)
        by_split = {s: set(m.loc[m["split"] == s, "patient_id"]) for s in ("train", "val", "test")}
        assert not by_split["train"] & by_split["val"] and not by_split["val"] & by_split["test"]
        assert not by_split["train"] & by_split["test"]


def test_subset_keeps_whole_patients_and_their_images(tmp_path):
    rows = _rows()
    meta = write_table(tmp_path / "meta.csv", rows)
    generate(tmp_path / "all", spec(meta))
    generate(tmp_path / "sub", spec(meta, max_patients=10))
    df = pd.read_csv(tmp_path / "sub" / "Data_Entry_2017.csv", dtype=str)
    patients = set(df["Patient ID"].astype(int))
    assert len(patients) == 10
    assert list(df["Image Index"]) == [r[0] for r in rows if r[3] in patients]  # every follow-up
    # the same seed draws the same patients, and an image depends only on its patient and name
    again = generate(tmp_path / "sub2", spec(meta, max_patients=10))
    assert again["patients"] == 10
    other = pd.read_csv(tmp_path / "sub2" / "Data_Entry_2017.csv", dtype=str)
    assert list(other["Image Index"]) == list(df["Image Index"])
    sub = {p.name: p for p in (tmp_path / "sub").glob("images_*/images/*.png")}
    full = {p.name: p for p in (tmp_path / "all").glob("images_*/images/*.png")}
    for name, p in sub.items():
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(full[name])))
    assert spec(meta, max_patients=10, seed=6).seed == 6
    generate(tmp_path / "seed6", spec(meta, max_patients=10, seed=6))
    df6 = pd.read_csv(tmp_path / "seed6" / "Data_Entry_2017.csv", dtype=str)
    assert set(df6["Patient ID"].astype(int)) != patients


def test_kaggle_2017_variants_are_read_alike(tmp_path):
    rows = _rows(8)
    a = read_metadata(write_table(tmp_path / "a.csv.gz", rows))
    b = read_metadata(
        write_table(
            tmp_path / "b.csv",
            rows,
            header=CSV_HEADER.replace("Patient Gender", "Patient Sex"),
            trailing=",",
            age_fmt="{:03d}Y",
        )
    )
    cols = ["image_index", "finding_labels", "follow_up", "patient_id", "age", "sex", "view"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert list(a["age"]) == [r[4] for r in rows]


def test_contradictory_keys_are_refused(tmp_path):
    meta = write_table(tmp_path / "meta.csv", _rows(5))
    with pytest.raises(WorkflowError, match=r"n_patients.*cannot be combined with metadata"):
        SyntheticSpec.from_config(dict(metadata=str(meta), n_patients=50))
    with pytest.raises(WorkflowError, match="set data.synthetic.metadata too"):
        SyntheticSpec.from_config(dict(max_patients=5))
    # a validated config holds every default: defaults are no contradiction
    from cxrtransfer.config.schema import defaults

    SyntheticSpec.from_config({**defaults("data", "synthetic"), "metadata": str(meta)})


def test_rule_input_is_the_table_checked_at_parse_time(tmp_path):
    """rules/data.smk: the table is an input of synthetic_download (a changed table
    regenerates the download); a missing table or contradictory keys fail before any job."""
    from cxrtransfer.data.synthetic import metadata_inputs

    meta = write_table(tmp_path / "meta.csv", _rows(5))
    data = {"source": "synthetic", "synthetic": {"metadata": str(meta), "max_patients": 3}}
    assert metadata_inputs(data) == {"metadata": str(meta)}
    assert metadata_inputs({"source": "synthetic", "synthetic": {}}) == {}
    missing = {"source": "kaggle", "synthetic": {"metadata": str(tmp_path / "nope.csv")}}
    assert metadata_inputs(missing) == {}  # not drawn: not needed
    with pytest.raises(
        WorkflowError, match=r"nope\.csv' does not exist\. Run `make real-metadata`"
    ):
        metadata_inputs({**missing, "source": "synthetic"})
    with pytest.raises(WorkflowError, match="prevalence"):
        metadata_inputs(
            {
                "source": "synthetic",
                "synthetic": {"metadata": str(meta), "prevalence": {"Mass": 0.5}},
            }
        )


def _edit(rows, i, col, value):
    rows = [list(r) for r in rows]
    rows[i][col] = value
    return rows


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_file", r"does not exist\. Run `make real-metadata`"),
        ("missing_column", r"missing column\(s\) \['Follow-up #'\]"),
        ("no_sex_column", r"'Patient Gender' or 'Patient Sex'"),
        ("bbox_table", r"looks like BBox_List_2017\.csv"),
        ("unknown_label", r"column 'Finding Labels' holds unknown label\(s\) 'Pneumothrax'"),
        ("duplicate", r"column 'Image Index': 1 duplicate image name\(s\).*00000001_003\.png"),
        ("path_names", r"column 'Image Index'.*not bare image file names.*another revision"),
        ("shifted_ids", r"column 'Patient ID' disagrees with the patient number"),
        ("bad_age", r"column 'Patient Age'.*'FIFTY'"),
        ("not_csv", r"cannot be read as a CSV table"),
        ("empty", r"no rows"),
    ],
)
def test_bad_tables_fail_clearly(tmp_path, case, expect):
    rows = _rows(6)
    path = tmp_path / "Data_Entry_bad.csv"
    if case == "missing_column":
        write_table(path, rows, header=CSV_HEADER.replace("Follow-up #", "Followup"))
    elif case == "no_sex_column":
        write_table(path, rows, header=CSV_HEADER.replace("Patient Gender", "Gender"))
    elif case == "bbox_table":
        path.write_text(
            "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3,4,,,\n"
        )
    elif case == "unknown_label":
        write_table(path, _edit(rows, 2, 1, "Pneumothrax"))
    elif case == "duplicate":
        write_table(path, [*rows, rows[1]])
    elif case == "path_names":
        write_table(path, _edit(rows, 0, 0, "images/" + rows[0][0]))
    elif case == "shifted_ids":
        write_table(path, _edit(rows, 1, 3, 99))
    elif case == "bad_age":
        write_table(path, _edit(rows, 1, 4, "FIFTY"))
    elif case == "not_csv":
        path = tmp_path / "Data_Entry_bad.csv.gz"
        path.write_bytes(b"this is not gzip data")
    elif case == "empty":
        path.write_text(CSV_HEADER + "\n")
    # the message names the file and says what to do; nothing is deleted on failure
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous download")
    with pytest.raises(WorkflowError, match=expect) as err:
        generate(out, spec(path))
    assert str(path) in str(err.value)
    if case != "missing_file":
        assert "make real-metadata" in str(err.value) and "header must be" in str(err.value)
    assert (out / "keep.txt").is_file()


# ---------------------------------------------------------------------------- the real table


@pytest.fixture(scope="module")
def real_table(root):
    path = root / DEFAULT_PATH
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: run `make real-metadata` (part of `make test`; it downloads "
            "the torchxrayvision 1.5.7 wheel from PyPI and extracts the NIH metadata table)."
        )
    return path


def test_real_table_is_the_2020_revision_with_the_real_counts(real_table):
    assert sha256(real_table) == SHA256
    meta = read_metadata(real_table)
    assert len(meta) == REAL_COUNTS["images"] == 112_120
    assert meta["patient_id"].nunique() == REAL_COUNTS["patients"] == 30_805
    labels = meta["finding_labels"].str.split("|").explode().value_counts()
    assert labels["No Finding"] == 60_361
    assert labels["Pneumothorax"] == 5_302 and labels["Cardiomegaly"] == 2_776
    assert set(meta["sex"]) == {"M", "F"} and set(meta["view"]) == {"PA", "AP"}


def test_real_subset_ingests(real_table, tmp_path):
    out = tmp_path / "nih"
    counts = generate(out, spec(real_table, max_patients=800, images_per_folder=1000))
    meta = read_metadata(real_table)
    mine = read_data_entry(out / "Data_Entry_2017.csv")
    real = meta.set_index("image_index").loc[mine["image_index"]]
    assert counts["patients"] == 800 == mine["patient_id"].nunique()
    assert list(real["finding_labels"]) == list(mine["finding_labels"])
    assert len(mine) == int(meta["patient_id"].isin(set(mine["patient_id"])).sum())
    m, rejected, _ = build_manifest(out, "Pneumothorax", 0.15, 42)
    assert rejected.empty and len(m) > 0


@pytest.fixture(scope="module")
def imbalanced_shards(real_table, tmp_path_factory):
    """Pneumothorax vs No Finding shards of a real-metadata subset at the real prevalence."""
    from cxrtransfer.data.shards import n_shards, shard_rows, write_shard

    tmp = tmp_path_factory.mktemp("imbalance")
    t0 = time.perf_counter()
    generate(
        tmp / "nih",
        spec(real_table, max_patients=1100, image_size=32, images_per_folder=2000, signal=2.0),
    )
    manifest, _, summary = build_manifest(tmp / "nih", "Pneumothorax", 0.25, 1)
    paths = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split]
        paths[split] = []
        for i in range(n_shards(len(rows), 4096)):
            p = tmp / split / f"{i:03d}.h5"
            write_shard(shard_rows(manifest, split, i, 4096), p, 32, {"split": split})
            paths[split].append(p)
    return paths, manifest, summary, time.perf_counter() - t0, tmp


def test_tiny_model_at_the_real_imbalance_does_not_collapse(imbalanced_shards):
    """About 8% positives, as the real Pneumothorax task: with the default balanced class
    weights the collapse gate does not fire, and metrics.json reports sensitivity and
    specificity at the validation (Youden) threshold."""
    import keras
    from cxrtransfer.models.gate import check_quality
    from cxrtransfer.models.inference import predict_shards
    from cxrtransfer.models.outputs import binary_metrics
    from cxrtransfer.models.train import train_model

    paths, manifest, summary, prep_s, tmp = imbalanced_shards
    prevalence = manifest["label"].mean()
    assert 0.05 < prevalence < 0.12, summary  # the real 5,302 / 65,663 = 8.1%
    assert (summary["positives"] >= 15).all(), summary
    settings = training_settings(  # class_weight: balanced, min_val_auc 0.6: the gate is armed
        name="imbalanced",
        task="pneumothorax",
        label="Pneumothorax",
        arch="MobileNetV3Small",
        image_size=32,
        epochs=3,
        batch_size=64,
        patience=3,
    )
    assert settings["class_weight"] == "balanced" and settings["min_val_auc"] == 0.6
    t0 = time.perf_counter()
    metrics = train_model(settings, paths["train"], paths["val"], paths["test"], tmp / "model")
    train_s = time.perf_counter() - t0
    saved = json.loads((tmp / "model" / "metrics.json").read_text())
    val = saved["val"]
    print(
        f"prevalence {prevalence:.3f}, {len(manifest)} images; prep {prep_s:.0f}s, training "
        f"{train_s:.0f}s; val {val}; threshold {saved['threshold']:.3f}"
    )
    assert saved["val"]["positives"] == int(
        summary.loc[summary["split"] == "val", "positives"].iloc[0]
    )
    for split in ("val", "test"):
        for k in ("sensitivity", "specificity", "auc"):
            assert np.isfinite(saved[split][k]), (split, k)
    assert 0 < val["predicted_positive_fraction"] < 1
    assert val["sensitivity"] > 0 and val["specificity"] > 0
    check_quality(settings, val, np.array([0.0, 1.0]))  # passed in training; does not raise
    # reported at the validation threshold: recomputed from the saved model's predictions
    model = keras.models.load_model(tmp / "model" / "model.keras", compile=False)
    r = predict_shards(model, paths["val"], 32)
    again = binary_metrics(r["labels"], r["probs"], saved["threshold"])
    assert again["sensitivity"] == pytest.approx(val["sensitivity"], abs=1e-9)
    assert again["specificity"] == pytest.approx(val["specificity"], abs=1e-9)
    assert metrics["settings"]["class_weight"] == "balanced"


def test_real_metadata_config_is_valid(root):
    """config/real_metadata.yaml passes the schema and the cross-checks, draws the table that
    `make real-metadata` writes, and every data.synthetic key it sets is usable with it."""
    import yaml
    from cxrtransfer.plan import checks
    from snakemake.utils import validate

    cfg = yaml.safe_load((root / "config" / "real_metadata.yaml").read_text())
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    checks.check_config(cfg, root)
    synth = cfg["data"]["synthetic"]
    assert synth["metadata"] == DEFAULT_PATH and synth["max_patients"] is None
    s = SyntheticSpec.from_config(dict(synth))
    assert s.image_size == cfg["data"]["image_size"] == 32
