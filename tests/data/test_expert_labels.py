"""Expert labels (data.expert_labels): reading and checking Google's combined file (the real
one when `make real-metadata` fetched it), the synthetic generator's file and its disagreement
rate, and the summary section."""

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import written
from cxrtransfer import WorkflowError
from cxrtransfer.data.expert_labels import (
    DEFAULT_PATH,
    FINDINGS,
    SHA256,
    expert_column,
    prepare,
    read_expert_labels,
)
from cxrtransfer.data.nih_wheel import sha256
from cxrtransfer.data.real_metadata import DEFAULT_PATH as METADATA_PATH
from cxrtransfer.data.synthetic import write_expert_labels

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / DEFAULT_PATH
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,"
    "Airspace opacity,Nodule or mass,Set Id"
)


def test_real_google_file_reads_and_matches_the_real_metadata(tmp_path):
    # make test fetches it (a prerequisite): missing means a broken setup, not a skip
    assert REAL.is_file(), f"{REAL} is missing: run `make real-metadata` first"
    assert sha256(REAL) == SHA256
    df = read_expert_labels(REAL)
    assert len(df) == 4376 and set(df["set_id"]) == {"test", "val"}
    assert df["Pneumothorax"].sum() == 238 and (df["set_id"] == "test").sum() == 1962
    assert list(df.columns) == ["image_index", "set_id", *FINDINGS]
    with gzip.open(REAL, "rt") as f:
        assert f.readline().strip() == HEADER
    if (ROOT / METADATA_PATH).is_file():
        out = prepare(REAL, ROOT / METADATA_PATH, tmp_path / "p.csv", "Pneumothorax")
        assert len(out) == 4376 and out["expert_label"].sum() == 238


def test_task_mapping():
    assert expert_column("Pneumothorax") == "Pneumothorax"
    assert expert_column("Cardiomegaly") is None
    assert expert_column("Nodule") is None  # 'Nodule or mass' is not the NIH Nodule label


ROW = "00000001_000.png,No Finding,0,1,58,M,PA,2048,2048,0.143,0.143,NO,YES,NO,NO,test\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + ",Reader ID\n" + ROW.strip() + ",7\n", "unknown column(s) ['Reader ID']"),
        (HEADER + "\n" + ROW.replace("NO,YES", "NO,MAYBE"), "column 'Pneumothorax': unknown"),
        (HEADER + "\n" + ROW.replace(",test", ",train"), "column 'Set Id': unknown value"),
        (HEADER + "\n" + ROW + ROW, "column 'Image Index': 1 duplicate"),
        (HEADER + "\n" + ROW.replace("00000001_000.png", "img1.png"), "column 'Image Index'"),
        ("Image Index,Set Id\n00000001_000.png,test\n", "no expert-label column"),
        (HEADER + "\n", "no rows"),
    ],
)
def test_bad_files_name_the_file_and_the_column(tmp_path, text, message):
    path = written(tmp_path / "google.csv", text)
    with pytest.raises(WorkflowError) as e:
        read_expert_labels(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "data.expert_labels" in str(e.value)


def test_images_absent_from_the_metadata_are_refused(tmp_path):
    path = written(tmp_path / "google.csv", HEADER + "\n" + ROW)
    meta = written(tmp_path / "Data_Entry_2017.csv", "Image Index,Finding Labels\n")
    with pytest.raises(WorkflowError) as e:
        prepare(path, meta, tmp_path / "out.csv", "Pneumothorax")
    msg = str(e.value)
    assert "column 'Image Index'" in msg and "absent from the download's metadata" in msg
    assert str(path) in msg and str(meta) in msg and "00000001_000.png" in msg
    meta.write_text("Image Index,Finding Labels\n00000001_000.png,No Finding\n")
    out = prepare(path, tmp_path, tmp_path / "out.csv", "Pneumothorax")  # the folder works too
    assert out.to_dict("records") == [
        {"image_index": "00000001_000.png", "set_id": "test", "expert_label": 1}
    ]


def test_generator_writes_the_combined_format_with_the_disagreement_rate(small_download, tmp_path):
    out = tmp_path / "google2019_nih-chest-xray-labels.csv.gz"
    counts = write_expert_labels(small_download, out, fraction=0.5, disagreement=0.2, seed=1)
    with gzip.open(out, "rt") as f:
        assert f.readline().strip() == HEADER
    df = read_expert_labels(out)
    entries = pd.read_csv(small_download / "Data_Entry_2017.csv", index_col=False)
    n = len(entries)
    assert counts["images"] == len(df) and abs(len(df) / n - 0.5) < 4 * np.sqrt(0.25 / n)
    labels = entries.set_index("Image Index").loc[df["image_index"], "Finding Labels"]
    nlp = labels.str.contains("Pneumothorax").to_numpy().astype(int)
    rate = float(np.mean(nlp != df["Pneumothorax"].to_numpy()))
    assert abs(rate - 0.2) < 4 * np.sqrt(0.2 * 0.8 / len(df)), rate
    test = set((small_download / "test_list.txt").read_text().split())
    assert (df["set_id"] == np.where(df["image_index"].isin(test), "test", "val")).all()
    # seeded: the same bytes again; no disagreement = the drawn labels
    again = tmp_path / "again.csv.gz"
    write_expert_labels(small_download, again, fraction=0.5, disagreement=0.2, seed=1)
    assert again.read_bytes() == out.read_bytes()
    write_expert_labels(small_download, again, fraction=1.0, disagreement=0.0, seed=1)
    exact = read_expert_labels(again)
    labels = entries.set_index("Image Index").loc[exact["image_index"], "Finding Labels"]
    assert (
        labels.str.contains("Pneumothorax").astype(int).to_numpy() == exact["Pneumothorax"]
    ).all()


def test_summary_section_and_unchanged_summary_without_expert_labels():
    from cxrtransfer.evaluate.summary import summary_markdown

    base = {
        "data_task": "pneumothorax",
        "attack": "pgd",
        "eps": 8.0,
        "source": "a",
        "target": "b",
        "relation": "surrogate",
        "transfer_rate": 0.5,
        "fooling_rate": 0.4,
        "flip_rate": 0.3,
        "adv_auroc": 0.6,
        "clean_auroc": 0.9,
        "n_images": 100,
    }
    plain = pd.DataFrame([base])
    with_expert = pd.DataFrame(
        [
            {
                **base,
                "n_expert": 40,
                "expert_adv_auroc": 0.55,
                "expert_nlp_adv_auroc": 0.61,
                "expert_fooling_rate": 0.45,
                "expert_nlp_fooling_rate": 0.41,
                "expert_note": "expert and NLP labels disagree on 3 of 40",
            }
        ]
    )
    text = summary_markdown(plain, {}, "synthetic")
    assert "Expert" not in text
    assert summary_markdown(with_expert, {}, "synthetic") == text  # no expert param: unchanged
    s = summary_markdown(with_expert, {}, "synthetic", {"pneumothorax": "Pneumothorax", "c": None})
    assert s.startswith(text.rstrip())
    assert "40 of 100 test images have an expert label" in s
    rows = re.sub(" {2,}", " ", s)  # the padding of tabulate's columns squeezed
    assert "| pgd | 8 | surrogate | 1 | 0.610 | 0.550 | 0.410 | 0.450 |" in rows
    assert "Data task c: its finding has no expert-label column" in s
    # two cells of a relation: lowest to highest, never their mean (which could hide either)
    other = {**with_expert.iloc[0].to_dict(), "target": "d", "expert_nlp_adv_auroc": 0.71}
    two = pd.concat([with_expert, pd.DataFrame([other])], ignore_index=True)
    rows = re.sub(" {2,}", " ", summary_markdown(two, {}, "synthetic", {"pneumothorax": "P"}))
    assert "| pgd | 8 | surrogate | 2 | 0.610 to 0.710 | 0.550 | 0.410 | 0.450 |" in rows
    assert "0.660" not in rows


def test_config_checks(root, tmp_path):
    """`synthetic` needs the generator's settings; a missing file is refused at parse time."""
    import yaml
    from cxrtransfer.plan import checks
    from cxrtransfer.plan import study as plan
    from snakemake.utils import validate

    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    assert plan.expert_columns(cfg) == {}
    cfg["data"]["expert_labels"] = "synthetic"
    with pytest.raises(WorkflowError, match="data.synthetic.expert_labels"):
        checks.check_config(cfg, root)
    cfg["data"]["synthetic"]["expert_labels"] = {"disagreement": 0.1}
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    assert cfg["data"]["synthetic"]["expert_labels"]["fraction"] == 0.5  # schema default
    checks.check_config(cfg, root)
    assert plan.expert_columns(cfg) == {"pneumothorax": "Pneumothorax", "cardiomegaly": None}
    cfg["data"]["expert_labels"] = str(tmp_path / "missing.csv.gz")
    with pytest.raises(WorkflowError, match="make real-metadata"):
        checks.check_config(cfg, root)
