"""The built-in dataset's layout and the ingest: CSV variants, split, bad input."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import written
from cxrtransfer import LABELS, NO_FINDING, WorkflowError
from cxrtransfer.data.ingest import build_manifest, check_download, read_data_entry, split_patients
from cxrtransfer.data.synthetic import CSV_HEADER, SyntheticSpec, generate
from PIL import Image

HEADER_2017 = CSV_HEADER + ","


def test_layout_matches_kaggle(small_download):
    d = small_download
    lines = (d / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == HEADER_2017
    assert all(line.endswith(",") for line in lines[1:])
    names = [line.split(",")[0] for line in lines[1:]]
    assert all(len(n) == len("00000013_005.png") and n[8] == "_" for n in names)
    folders = sorted(p.relative_to(d).as_posix() for p in d.glob("images_*/images"))
    assert folders[:2] == ["images_001/images", "images_002/images"]
    assert (d / "images_001" / "images").is_dir() and (d / "BBox_List_2017.csv").is_file()
    df = pd.read_csv(d / "Data_Entry_2017.csv")
    assert "Unnamed: 11" in df.columns  # the trailing comma, as in the real file
    labels = {lab for s in df["Finding Labels"] for lab in s.split("|")}
    assert NO_FINDING in labels and {"Pneumothorax", "Cardiomegaly"} <= labels
    assert labels <= set(LABELS) | {NO_FINDING}
    assert (df.groupby("Patient ID").size() > 1).any()  # several follow-ups per patient
    modes = {Image.open(p).mode for p in list(d.glob("images_*/images/*.png"))}
    assert modes == {"L", "RGBA"}
    test = set((d / "test_list.txt").read_text().split())
    tv = set((d / "train_val_list.txt").read_text().split())
    assert not test & tv and test | tv == set(names)
    pid = df.set_index("Image Index")["Patient ID"]
    assert not set(pid[list(test)]) & set(pid[list(tv)])  # patient-wise


def test_generation_is_deterministic(tmp_path):
    spec = SyntheticSpec.from_config(
        dict(seed=11, n_patients=12, image_size=32, images_per_folder=10)
    )
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    for f in ("Data_Entry_2017.csv", "test_list.txt", "train_val_list.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    for p in (tmp_path / "a").glob("images_*/images/*.png"):
        q = tmp_path / "b" / p.relative_to(tmp_path / "a")
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))
    generate(tmp_path / "c", SyntheticSpec.from_config(dict(seed=12, n_patients=12, image_size=32)))
    assert (tmp_path / "a" / "Data_Entry_2017.csv").read_bytes() != (
        tmp_path / "c" / "Data_Entry_2017.csv"
    ).read_bytes()


def test_findings_are_visible():
    """The class signal is real: enlarged hearts are brighter below the mediastinum."""
    from cxrtransfer.data.synthetic import _patient_anatomy, render

    rng = np.random.default_rng(0)
    normal, cardio = [], []
    for _ in range(20):
        a = _patient_anatomy(rng)
        normal.append(render({"No Finding"}, a, np.random.default_rng(1), 64)[38:48, 20:44].mean())
        cardio.append(
            render({"Cardiomegaly"}, a, np.random.default_rng(1), 64)[38:48, 20:44].mean()
        )
    assert np.mean(cardio) > np.mean(normal) + 5


def test_read_2017_and_2020_variants(tmp_path):
    v2017 = written(
        tmp_path / "a.csv",
        HEADER_2017 + "\n"
        "00000001_000.png,Cardiomegaly|Effusion,0,1,058Y,M,PA,1024,1024,0.143,0.143,\n"
        "00000002_000.png,No Finding,0,2,6M,F,AP,1024,1024,0.143,0.143,\n",
    )
    v2020 = written(
        tmp_path / "b.csv",
        CSV_HEADER.replace("Patient Gender", "Patient Sex") + "\n"
        "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,1024,1024,0.143,0.143\n"
        "00000002_000.png,No Finding,0,2,0,F,AP,1024,1024,0.143,0.143\n",
    )
    a, b = read_data_entry(v2017), read_data_entry(v2020)
    assert (
        list(a["image_index"]) == list(b["image_index"]) == ["00000001_000.png", "00000002_000.png"]
    )
    assert list(a["patient_id"]) == [1, 2] and list(a["sex"]) == list(b["sex"]) == ["M", "F"]
    assert a["age"].iloc[0] == b["age"].iloc[0] == 58
    assert a["age"].iloc[1] == pytest.approx(0.5)
    assert not any(c.startswith("Unnamed") for c in a.columns)


def test_missing_column_and_unknown_label(tmp_path):
    bad = written(tmp_path / "c.csv", "Image Index,Patient ID\n00000001_000.png,1\n")
    with pytest.raises(WorkflowError, match="Finding Labels"):
        read_data_entry(bad)
    unknown = written(
        tmp_path / "d.csv", HEADER_2017 + "\n00000001_000.png,Pneumothrax,0,1,58,M,PA,1,1,1,1,\n"
    )
    with pytest.raises(WorkflowError, match="Pneumothrax"):
        read_data_entry(unknown)


def test_duplicates(tmp_path):
    row = "00000001_000.png,No Finding,0,1,58,M,PA,1,1,1,1,\n"
    same = read_data_entry(written(tmp_path / "e.csv", HEADER_2017 + "\n" + row + row))
    assert len(same) == 1 and same.attrs["duplicates_dropped"] == 1
    other = row.replace("No Finding", "Mass")
    with pytest.raises(WorkflowError, match="twice with different labels"):
        read_data_entry(written(tmp_path / "f.csv", HEADER_2017 + "\n" + row + other))


def test_split_has_no_patient_leakage(small_download):
    m, _, summary = build_manifest(small_download, "Pneumothorax", 0.2, 5)
    by_split = {s: set(m.loc[m["split"] == s, "patient_id"]) for s in ("train", "val", "test")}
    assert by_split["train"] and by_split["val"] and by_split["test"]
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    official = set((small_download / "test_list.txt").read_text().split())
    assert set(m.loc[m["split"] == "test", "image_index"]) <= official
    # negatives are exactly No Finding; positives carry the label, possibly with others
    assert (m.loc[m["label"] == 0, "finding_labels"] == NO_FINDING).all()
    assert m.loc[m["label"] == 1, "finding_labels"].str.contains("Pneumothorax").all()
    assert m.loc[m["label"] == 1, "finding_labels"].str.contains(r"\|").any()
    assert set(summary["split"]) == {"train", "val", "test"}
    assert summary["positives"].sum() == (m["label"] == 1).sum()
    m2, _, _ = build_manifest(small_download, "Pneumothorax", 0.2, 5)
    pd.testing.assert_frame_equal(m, m2)  # seeded


def test_overlapping_official_lists_fail(small_download, tmp_path):
    entries = read_data_entry(small_download / "Data_Entry_2017.csv")
    tv = (small_download / "train_val_list.txt").read_text().split()
    te = (small_download / "test_list.txt").read_text().split()
    with pytest.raises(WorkflowError, match="share"):
        split_patients(entries, tv, te + tv[:1], 0.2, 0)
    # one image of a patient with several train/val images moved to the test list: leakage
    pid = entries.set_index("image_index")["patient_id"]
    counts = pid[tv].value_counts()
    moved = next(n for n in tv if counts[pid[n]] > 1)
    with pytest.raises(WorkflowError, match="patient"):
        split_patients(entries, [n for n in tv if n != moved], [*te, moved], 0.2, 0)


def test_wrong_kaggle_dir(tmp_path):
    with pytest.raises(WorkflowError, match="not a directory"):
        check_download(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(WorkflowError, match="Data_Entry_2017.csv"):
        check_download(tmp_path / "d")
    (tmp_path / "d" / "Data_Entry_2017.csv").write_text("Image Index\n")
    # one message names everything that is missing
    with pytest.raises(
        WorkflowError, match=r"missing train_val_list\.txt, test_list\.txt, the image folders"
    ):
        check_download(tmp_path / "d")


def test_missing_zero_byte_and_non_png_are_rejected(small_download, tmp_path):
    d = tmp_path / "nih"
    shutil.copytree(small_download, d)
    m, _, _ = build_manifest(d, "Cardiomegaly", 0.2, 1)
    a, b, c = (Path(p) for p in m["path"].iloc[:3])
    a.unlink()
    b.write_bytes(b"")
    c.write_bytes(b"GIF89a not a png")
    m2, rejected, summary = build_manifest(d, "Cardiomegaly", 0.2, 1)
    reasons = dict(zip(rejected["image_index"], rejected["reason"], strict=True))
    assert reasons[a.name] == "missing on disk"
    assert reasons[b.name] == "zero-byte file"
    assert "signature" in reasons[c.name]
    assert len(m2) == len(m) - 3 and summary["rejected"].sum() == 3


def test_manifest_changes_when_an_image_file_changes(small_download, tmp_path):
    """Images are not Snakemake inputs of the shards: the manifest records each file's size
    and mtime, so a regenerated or replaced image changes the manifest and its shards rerun."""
    import os
    import shutil

    from cxrtransfer.data.ingest import build_manifest

    d = tmp_path / "dl"
    shutil.copytree(small_download, d)
    before, _, _ = build_manifest(d, "Pneumothorax", 0.2, 1)
    path = before["path"].iloc[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after, _, _ = build_manifest(d, "Pneumothorax", 0.2, 1)
    changed = before.compare(after)
    assert list(changed.index) == [0] and "file_mtime_ns" in changed.columns.get_level_values(0)
