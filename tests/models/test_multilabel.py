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
from conftest import training_settings
from cxrtransfer import LABELS, WorkflowError
from cxrtransfer.plan import checks
from cxrtransfer.plan import study as plan

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
    checks.check_config(c, root)
    return c


def _refused(c, match):
    with pytest.raises(WorkflowError, match=match):
        checks.check_config(c)


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


def test_own_task_of_a_multilabel_source_is_each_task_it_covers(cfg):
    """``data_task: own`` (also through ``sources: all``): every model attacks its own task's
    test set; a multi-label model's own tasks are the binary tasks it has an output for."""
    cfg["grid"] = [{"sources": "all", "data_task": "own"}]
    checks.check_config(cfg)
    sets = {(s.source, s.data_task) for s in plan.adversarial_sets(cfg, controls=False)}
    assert sets == {
        ("pneumothorax_small", "pneumothorax"),
        ("pneumothorax_small_s2", "pneumothorax"),
        ("cardiomegaly_small", "cardiomegaly"),
        ("chest14_small@pneumothorax", "pneumothorax"),
        ("chest14_small@cardiomegaly", "cardiomegaly"),
    }
    cfg["tasks"]["chest14"] = {"labels": ["Effusion", "Cardiomegaly"]}
    sets = {(s.source, s.data_task) for s in plan.adversarial_sets(cfg, controls=False)}
    assert ("chest14_small@cardiomegaly", "cardiomegaly") in sets
    assert not any(s.startswith("chest14_small@pneumothorax") for s, _ in sets)


def test_a_list_of_labels_gives_views_of_its_findings_only(cfg):
    cfg["tasks"]["chest14"] = {"labels": ["Effusion", "Cardiomegaly"]}
    cfg["grid"] = cfg["grid"][:1]
    checks.check_config(cfg)
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
            lambda c: (
                c["tasks"].update(chest14={"labels": ["Edema"]}),
                c.update(grid=[*c["grid"][:1], {"sources": ["chest14_small"], "data_task": "own"}]),
            ),
            r"grid\[1\]: sources: the multi-label model 'chest14_small' with data_task: own.*"
            r"no binary task's finding",
        ),
        (
            lambda c: (
                c["tasks"].update(chest14={"labels": ["Edema"]}),
                c.update(grid=[*c["grid"][:1], {"sources": "all", "data_task": "own"}]),
            ),
            r"grid\[1\]: sources: all includes the multi-label model.*no binary task's finding",
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
            lambda c: c.update(
                defences={"d": {"model": "chest14_small", "defence": {"bit_depth": 3}}}
            ),
            r"defences\.d\.model: 'chest14_small' is a multi-label model",
        ),
        (
            lambda c: c["models"]["chest14_small"].update(training={"adversarial": {"eps": 2}}),
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
    checks.check_config(nih, root)
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
    from cxrtransfer.data.ingest import build_manifest

    manifest, rejected, summary = build_manifest(small_download, TWO, 0.2, 1)
    return manifest, summary


def test_multilabel_manifest_holds_every_image_with_the_binary_split(
    small_download, multi_manifest
):
    from cxrtransfer.data.ingest import CSV_NAME, build_manifest, read_data_entry

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
    from cxrtransfer.data.datasets import label_summary
    from cxrtransfer.data.shards import shard_rows, write_shard
    from cxrtransfer.verify.formats import check_shard

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
    from cxrtransfer.data.datasets import patient_half, subset_patients
    from cxrtransfer.data.shards import shard_rows, write_shard

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


# ----------------------------------------------------------------------------------------------
# Training a tiny multi-label model and its finding view
# ----------------------------------------------------------------------------------------------

SIZE = 32


def _shards(manifest, out, attrs):
    from cxrtransfer.data.shards import n_shards, shard_rows, write_shard

    paths = {}
    for split in ("train", "val", "test"):
        n = int((manifest["split"] == split).sum())
        paths[split] = []
        for i in range(n_shards(n, 256)):
            p = out / split / f"{i:03d}.h5"
            write_shard(shard_rows(manifest, split, i, 256), p, SIZE, {**attrs, "split": split})
            paths[split].append(p)
    return paths


@pytest.fixture(scope="module")
def shards32(small_download, multi_manifest, tmp_path_factory):
    """Shards at 32 px of the multi-label task (Pneumothorax, Cardiomegaly) and of the binary
    Pneumothorax task."""
    from cxrtransfer.data.ingest import build_manifest

    out = tmp_path_factory.mktemp("shards32")
    binary, _, _ = build_manifest(small_download, "Pneumothorax", 0.2, 1)
    return {
        "multi": _shards(multi_manifest[0], out / "multi", {"task": "chest", "label_names": TWO}),
        "binary": _shards(
            binary, out / "binary", {"task": "pneumothorax", "label": "Pneumothorax"}
        ),
    }


def _settings(**kw):
    return training_settings(
        **{
            "name": "chest_tiny",
            "task": "chest",
            "labels": TWO,
            "arch": "MobileNetV3Small",
            "image_size": SIZE,
            "epochs": 2,
            "min_val_auc": 0.0,
            "patience": 5,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def trained(shards32, tmp_path_factory):
    from cxrtransfer.models.train import train_model

    out = tmp_path_factory.mktemp("chest_tiny")
    s = shards32["multi"]
    metrics = train_model(_settings(), s["train"], s["val"], s["test"], out)
    return out, metrics


def test_multilabel_training_records_columns_and_per_label_aurocs(trained, shards32):
    import keras
    from cxrtransfer.models.inference import predict_shards
    from sklearn.metrics import roc_auc_score

    out, _ = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["output"] == "sigmoid" and saved["output_columns"] == TWO
    assert saved["threshold"] is None and set(saved["thresholds_per_label"]) == set(TWO)
    assert "unweighted" in saved["loss"]
    model = keras.models.load_model(out / "model.keras", safe_mode=True, compile=False)
    assert model.output_shape == (None, 2) and model.layers[-1].activation.__name__ == "sigmoid"
    test = predict_shards(model, shards32["multi"]["test"], SIZE, multilabel=True)
    assert test["probs"].shape == test["labels"].shape == (len(test["image_index"]), 2)
    per = saved["test"]["auc_per_label"]
    for k, lab in enumerate(TWO):
        assert per[lab] == pytest.approx(
            roc_auc_score(test["labels"][:, k], test["probs"][:, k]), abs=1e-6
        )
        assert saved["val"]["auc_per_label"][lab] is not None
    assert saved["test"]["auc"] == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert saved["epochs_run"] == 2 and len(pd.read_csv(out / "history.csv")) == 2


def test_multilabel_quality_gate_is_on_the_mean_and_names_weak_labels():
    from cxrtransfer.models.gate import check_multilabel_quality
    from cxrtransfer.models.outputs import multilabel_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 3))
    p = np.stack([y[:, 0] * 0.8 + 0.1, rng.random(200), 1.0 - y[:, 2]], axis=1)
    m = multilabel_metrics(y, p, ["A", "B", "C"])
    assert m["auc_per_label"]["A"] == 1.0 and m["auc_per_label"]["C"] == 0.0
    with pytest.raises(WorkflowError, match=r"mean validation AUC 0\.\d+ over 3 labels.*C 0\.000"):
        check_multilabel_quality({"name": "x", "min_val_auc": 0.6}, m, p)
    y[:, 1] = 0  # a label without positives is not scored
    m = multilabel_metrics(y, p, ["A", "B", "C"])
    assert m["auc_per_label"]["B"] is None and m["labels_scored"] == 2
    constant = np.full_like(p, 0.3)
    with pytest.raises(WorkflowError, match="collapsed"):
        check_multilabel_quality(
            {"name": "x", "min_val_auc": 0.0},
            multilabel_metrics(y, constant, list("ABC")),
            constant,
        )


def test_finding_view_equals_the_models_output_and_its_loss(trained):
    import keras
    import tensorflow as tf
    from cxrtransfer.models.build import build_finding_view

    out, _ = trained
    model = keras.models.load_model(out / "model.keras", safe_mode=True, compile=False)
    k = TWO.index("Cardiomegaly")
    view = build_finding_view(model, k)
    x = tf.constant(np.random.default_rng(1).random((6, SIZE, SIZE, 1)), tf.float32)
    p_model = model(x, training=False).numpy()[:, k]
    p_view = view(x, training=False).numpy()
    np.testing.assert_allclose(p_view[:, 1], p_model, atol=1e-6)
    np.testing.assert_allclose(p_view.sum(axis=1), 1.0, atol=1e-6)
    y = np.array([1, 0, 1, 0, 1, 0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ce = keras.losses.sparse_categorical_crossentropy(y, view(x, training=False))
        bce = keras.losses.binary_crossentropy(
            y[:, None].astype("float32"), model(x, training=False)[:, k : k + 1]
        )
    np.testing.assert_allclose(ce.numpy(), bce.numpy(), rtol=1e-4, atol=1e-6)
    g_view, g_model = tape.gradient(ce, x).numpy(), tape.gradient(bce, x).numpy()
    assert np.abs(g_model).max() > 0
    np.testing.assert_allclose(g_view, g_model, rtol=1e-3, atol=1e-5 * np.abs(g_model).max())


def test_view_checkpoint_is_a_contract_model_with_its_own_record(trained, shards32, tmp_path):
    from cxrtransfer.core.products import read_patients
    from cxrtransfer.core.provenance import model_record
    from cxrtransfer.models.checkpoints import load_checkpoint
    from cxrtransfer.models.inference import predict_shards
    from cxrtransfer.models.views import build_view_checkpoint

    out, _ = trained
    settings = {
        "model": "chest_tiny",
        "task": "pneumothorax",
        "label": "Pneumothorax",
        "column": 0,
        "output_columns": TWO,
        "arch": "MobileNetV3Small",
        "image_size": SIZE,
    }
    kw = dict(
        name="chest_tiny@pneumothorax",
        model_path=out / "model.keras",
        metrics_path=out / "metrics.json",
        patients_path=out / "train_patients.txt",
        val_shards=shards32["binary"]["val"],
        test_shards=shards32["binary"]["test"],
        out_dir=tmp_path / "view",
    )
    metrics = build_view_checkpoint(settings=settings, **kw)
    view = load_checkpoint(tmp_path / "view" / "model.keras", SIZE)  # safe mode, 2 columns
    saved = json.loads((tmp_path / "view" / "metrics.json").read_text())
    assert saved["output_columns"] == ["negative", "Pneumothorax"] and saved["output"] == "softmax2"
    assert saved["multi_label_model"] == "chest_tiny" and saved["output_column"] == 0
    assert saved["multi_label_output_columns"] == TWO
    assert model_record(tmp_path / "view" / "model.keras", tmp_path / "view" / "metrics.json")
    assert 0 <= saved["threshold"] <= 1 and metrics["task"] == "pneumothorax"
    test = predict_shards(view, shards32["binary"]["test"], SIZE)
    from sklearn.metrics import roc_auc_score

    assert saved["test"]["auc"] == pytest.approx(roc_auc_score(test["labels"], test["probs"]))
    assert read_patients(tmp_path / "view" / "train_patients.txt") == read_patients(
        out / "train_patients.txt"
    )
    with pytest.raises(WorkflowError, match="output columns"):  # stale config vs checkpoint
        build_view_checkpoint(
            settings={**settings, "output_columns": ["Edema", "Pneumothorax"]},
            **{**kw, "out_dir": tmp_path / "v2"},
        )


# ----------------------------------------------------------------------------------------------
# The workflow plans the multi-label model, its views and the sets they are evaluated in
# ----------------------------------------------------------------------------------------------


def test_workflow_plans_views_as_targets_and_sources(root, cfg, tmp_path):
    import subprocess
    import sys

    from test_workflow import planned, snakemake

    cfg["grid"].append({"sources": ["chest14_small"], "data_task": "cardiomegaly"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned(root, tmp_path)
    assert jobs["finding_view"] == 2 and jobs["train"] == 4  # three binary, one multi-label
    assert jobs["manifest"] == 3  # pneumothorax, cardiomegaly, chest14
    out = snakemake(root, tmp_path, "-n").stdout
    for task in ("pneumothorax", "cardiomegaly"):
        view = f"chest14_small@{task}"
        assert f"view={view}" in out  # its finding_view job
        assert f"source={view}, data_task={task}" in out  # attacked as a source
        assert f"target={view}" in out  # predicted as a target
    # the opt-in overlay on the default demo plans too
    demo = tmp_path / "demo"
    demo.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile")]
    cmd += ["--directory", str(demo), "--cores", "2", "-n", "--configfile"]
    cmd += [str(root / "config" / "multilabel_demo.yaml")]  # base: demo
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "view=chest14_small@pneumothorax" in r.stdout
    assert "source=chest14_small@pneumothorax, data_task=pneumothorax" in r.stdout


def test_verify_counts_a_view_as_made_from_its_multilabel_model(tmp_path):
    from cxrtransfer.verify.index import build_index, children
    from cxrtransfer.verify.products import list_products

    for name, task in (
        ("chest", "chest14"),
        ("chest@pneumothorax", "pneumothorax"),
        ("p", "pneumothorax"),
    ):
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"task": task, "checkpoint_sha256": "0"}))
    products = list_products(tmp_path)
    ix = build_index(tmp_path, products)
    model = {p["model"]: p for p in products["model"]}
    assert set(model) == {"chest", "chest@pneumothorax", "p"}
    assert model["chest@pneumothorax"] in children(model["chest"], ix)
    assert model["chest@pneumothorax"] not in children(model["p"], ix)
