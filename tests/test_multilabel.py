"""Multi-label models (a task with `labels:`): config refusals, the multi-label manifest and
shards, training with per-label AUROCs, the finding views M@T (probabilities and input gradients
equal to the model's output for that finding), the plan, task-independent training halves."""

import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from cxrtransfer import LABELS, WorkflowError, plan
from cxrtransfer.train import TRAINING_DEFAULTS

TWO = ["Pneumothorax", "Cardiomegaly"]


# ----------------------------------------------------------------------------------------------
# Config and plan
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cfg(root):
    """config/test.yaml with a multi-label task and model, as a target and a source."""
    from snakemake.utils import validate

    c = yaml.safe_load((root / "config" / "test.yaml").read_text())
    c["tasks"]["chest14"] = {"labels": "all"}
    c["models"]["chest14_small"] = {
        "task": "chest14",
        "arch": "MobileNetV3Small",
        "seed": 5,
        "train_subset": "half_b",
    }
    c["grid"] = [
        {"sources": ["pneumothorax_small", "pneumothorax_small_s2"], "data_task": "own"},
        {"sources": ["chest14_small"], "data_task": "pneumothorax"},
    ]
    validate(c, str(root / "config" / "config.schema.yaml"))
    plan.check_config(c, root)
    return c


def _refused(c, match):
    with pytest.raises(WorkflowError, match=match):
        plan.check_config(c)


def test_views_are_targets_and_multilabel_sources_resolve_to_them(cfg):
    assert plan.views(cfg) == ["chest14_small@pneumothorax", "chest14_small@cardiomegaly"]
    assert plan.targets_for(cfg, "pneumothorax") == [
        "pneumothorax_small",
        "pneumothorax_small_s2",
        "chest14_small@pneumothorax",
    ]
    assert plan.targets_for(cfg, "cardiomegaly")[-1] == "chest14_small@cardiomegaly"
    sets = {(s.source, s.data_task) for s in plan.adversarial_sets(cfg)}
    assert ("chest14_small@pneumothorax", "pneumothorax") in sets
    assert not any(s == "chest14_small" for s, _ in sets)
    assert plan.view_column(cfg, "chest14_small@pneumothorax") == LABELS.index("Pneumothorax")
    facts = plan.source_facts(cfg, "chest14_small@cardiomegaly")
    assert facts["task"] == "cardiomegaly" and facts["arch"] == "MobileNetV3Small"
    assert facts["multi_label_model"] == "chest14_small"
    assert plan.source_task(cfg, "chest14_small@cardiomegaly") == "cardiomegaly"
    outputs = plan.final_outputs(cfg)
    assert "results/models/chest14_small@cardiomegaly/model.keras" in outputs


def test_a_list_of_labels_gives_views_of_its_findings_only(cfg):
    cfg["tasks"]["chest14"] = {"labels": ["Effusion", "Cardiomegaly"]}
    cfg["grid"] = cfg["grid"][:1]
    plan.check_config(cfg)
    assert plan.views(cfg) == ["chest14_small@cardiomegaly"]
    assert plan.view_column(cfg, "chest14_small@cardiomegaly") == 1
    assert plan.task_labels(cfg, "chest14") == ["Effusion", "Cardiomegaly"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda c: c["tasks"].update(chest14={"labels": ["Pneumothorax", "Pneumothrax"]}),
            r"tasks\.chest14\.labels: unknown finding.*Pneumothrax",
        ),
        (
            lambda c: c["tasks"].update(chest14={"labels": ["Edema", "Edema"]}),
            r"tasks\.chest14\.labels: \['Edema'\] listed more than once",
        ),
        (
            lambda c: c["tasks"].update(chest14={"labels": "all", "label": "Edema"}),
            r"tasks\.chest14: give exactly one of 'label'.*'labels'",
        ),
        (
            lambda c: c["grid"].append({"sources": ["pneumothorax_small"], "data_task": "chest14"}),
            r"grid\[2\]\.data_task: 'chest14' is a multi-label task.*binary task",
        ),
        (
            lambda c: c["grid"].append({"sources": ["chest14_small"], "data_task": "own"}),
            r"grid\[2\]: sources: the multi-label model 'chest14_small'.*name the data task",
        ),
        (
            lambda c: c["grid"].append({"sources": "all", "data_task": "own"}),
            r"grid\[2\]: sources: all includes the multi-label model.*data_task",
        ),
        (
            lambda c: c["grid"].append(
                {"sources": ["chest14_small@pneumothorax"], "data_task": "pneumothorax"}
            ),
            r"grid\[2\]\.sources: 'chest14_small@pneumothorax' names a view.*'chest14_small'",
        ),
        (
            lambda c: (
                c["tasks"].update(chest14={"labels": ["Edema"]}),
                c["grid"].append({"sources": ["chest14_small"], "data_task": "cardiomegaly"}),
            ),
            r"grid\[1\]\.sources: the multi-label model 'chest14_small' has no output for "
            r"Pneumothorax \(the finding of data_task 'pneumothorax'\); its labels: \['Edema'\]",
        ),
        (
            lambda c: c["grid"].append(
                {"sources": [["chest14_small", "pneumothorax_small"]], "data_task": "own"}
            ),
            r"grid\[2\]\.sources: ensemble .*multi-label",
        ),
        (
            lambda c: c.update(defences={"d": {"model": "chest14_small", "defence": {"bit_depth": 3}}}),
            r"defences\.d\.model: 'chest14_small' is a multi-label model",
        ),
        (
            lambda c: c["models"]["chest14_small"].update(
                training={"adversarial": {"eps": 2}}
            ),
            r"models\.chest14_small\.training\.adversarial: .*multi-label",
        ),
    ],
)
def test_bad_multilabel_config_is_refused_naming_the_key(cfg, mutate, match):
    c = copy.deepcopy(cfg)
    mutate(c)
    _refused(c, match)


def test_schema_wants_exactly_one_of_label_and_labels(root):
    from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
    from snakemake.utils import validate

    c = yaml.safe_load((root / "config" / "test.yaml").read_text())
    schema = str(root / "config" / "config.schema.yaml")
    for bad in ({"label": "Edema", "labels": "all"}, {}, {"labels": "some"}):
        c["tasks"]["x"] = bad
        with pytest.raises(SnakemakeWorkflowError):
            validate(copy.deepcopy(c), schema)


def test_shipped_configs_have_the_multilabel_target(root):
    from snakemake.utils import validate

    nih = yaml.safe_load((root / "config" / "nih.yaml").read_text())
    validate(nih, str(root / "config" / "config.schema.yaml"))
    plan.check_config(nih, root)
    m = nih["models"]["chest14_densenet121"]
    assert (m["arch"], m["pretrained"]) == ("DenseNet121", "imagenet")
    assert plan.task_labels(nih, m["task"]) == list(LABELS)
    for task in ("pneumothorax", "cardiomegaly"):
        assert f"chest14_densenet121@{task}" in plan.targets_for(nih, task)
    assert any(s.source.startswith("chest14_densenet121@") for s in plan.adversarial_sets(nih))
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert not plan.views(default)  # the default demo has no multi-label model


# ----------------------------------------------------------------------------------------------
# Data: manifest, shards, halves
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_manifest(small_download):
    from cxrtransfer.ingest import build_manifest

    manifest, rejected, summary = build_manifest(small_download, TWO, 0.2, 1)
    return manifest, summary


def test_multilabel_manifest_holds_every_image_with_the_binary_split(
    small_download, multi_manifest
):
    from cxrtransfer.ingest import CSV_NAME, build_manifest, read_data_entry

    manifest, summary = multi_manifest
    binary, _, _ = build_manifest(small_download, "Pneumothorax", 0.2, 1)
    entries = read_data_entry(small_download / CSV_NAME)
    assert set(manifest["image_index"]) == set(entries["image_index"])  # every listed image
    assert set(binary["image_index"]) < set(manifest["image_index"])
    # the same split per image, so the same val (and test) patients as the binary task
    split = manifest.set_index("image_index")["split"]
    assert (split[binary["image_index"]].to_numpy() == binary["split"].to_numpy()).all()
    for s in ("val", "test"):
        assert set(binary.loc[binary["split"] == s, "patient_id"]) <= set(
            manifest.loc[manifest["split"] == s, "patient_id"]
        )
    any_finding = manifest["finding_labels"].str.split("|").apply(lambda x: bool(set(x) & set(TWO)))
    assert (manifest["label"].astype(bool) == any_finding).all()
    assert (summary["label"] == "Pneumothorax|Cardiomegaly").all()


def test_multilabel_shard_targets_equal_finding_labels(multi_manifest, tmp_path):
    from cxrtransfer.data import label_summary
    from cxrtransfer.shards import shard_rows, write_shard
    from cxrtransfer.verify import check_shard

    manifest, _ = multi_manifest
    rows = shard_rows(manifest, "val", 0, 10_000)
    path = tmp_path / "000.h5"
    write_shard(rows, path, 32, {"task": "chest", "split": "val", "label_names": TWO})
    with h5py.File(path, "r") as f:
        targets, names = f["targets"][...], f["image_index"][...].astype(str)
        labels = f["labels"][...]
        assert list(f.attrs["label_names"]) == TWO and targets.dtype == np.uint8
    truth = rows.set_index("image_index").loc[names, "finding_labels"]
    for k, lab in enumerate(TWO):
        expected = truth.str.split("|").apply(lambda x, lab=lab: lab in x).to_numpy()
        assert (targets[:, k].astype(bool) == expected).all()
        assert expected.any() and not expected.all()
    assert (labels == targets.max(axis=1)).all()
    assert (targets.sum(axis=1) == 0).any()  # No Finding images are all-zero rows
    summary = label_summary([path], 32)  # existing readers: labels = any finding
    assert summary["n1"] == int(labels.sum())
    assert check_shard(path, "chest", "val") is None
    with h5py.File(path, "a") as f:  # a damaged targets matrix is found by verify
        del f["targets"]
        f.create_dataset("targets", data=targets[:, :1])
    assert "targets" in check_shard(path, "chest", "val")


def test_halves_are_task_independent_and_disjoint(multi_manifest, pneumothorax_shards, tmp_path):
    from cxrtransfer.data import patient_half, subset_patients
    from cxrtransfer.shards import shard_rows, write_shard

    manifest, _ = multi_manifest
    path = tmp_path / "train.h5"
    write_shard(shard_rows(manifest, "train", 0, 100_000), path, 16, {"label_names": TWO})
    multi_b = subset_patients([path], "half_b", 1)
    multi_a = subset_patients([path], "half_a", 1)
    binary_a = subset_patients(pneumothorax_shards["train"], "half_a", 1)
    binary_b = subset_patients(pneumothorax_shards["train"], "half_b", 1)
    assert multi_b and binary_a and not multi_b & binary_a
    assert not multi_a & binary_b
    # a binary task's half is the multi-label task's half restricted to its patients
    assert binary_a == multi_a & (binary_a | binary_b)
    n = len(multi_a) + len(multi_b)
    assert 0.35 < len(multi_a) / n < 0.65  # about half each
    assert {patient_half(p, 1) for p in multi_a} == {"half_a"}
    # another seed draws other halves
    assert subset_patients([path], "half_a", 2) != multi_a
