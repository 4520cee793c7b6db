"""Adversarial training (training.adversarial) and fine-tuning (models.<name>.init_from): the
adversarial batch, the TRADES objective, robustness gained, the init checkpoint, the config
checks. Real TensorFlow on tiny 32 px data (a bright blob marks the finding)."""

import copy
import json
import shutil

import h5py
import numpy as np
import pytest
import yaml
from conftest import training_settings
from cxrtransfer import WorkflowError
from cxrtransfer.attacks import adversarial_training as AT
from cxrtransfer.models.settings import model_settings
from cxrtransfer.models.train import inputs_stamp, train_model
from cxrtransfer.plan import checks

SIZE = 32
EPS = 8.0  # training eps and white-box attack eps, 1/255 units
ADV = {"eps": EPS, "fraction": 0.5, "steps": 3, "step_fraction": 0.5}


def _settings(**kw):
    return training_settings(
        **{
            "name": "blob",
            "task": "blob",
            "label": "Pneumothorax",
            "arch": "MobileNet",  # the fastest keras.applications backbone to trace at 32 px
            "image_size": SIZE,
            "epochs": 5,
            "batch_size": 32,
            "bn_momentum": 0.5,
            "min_val_auc": 0.6,
            "patience": 10,
            **kw,
        }
    )


def _blob_images(n: int, seed: int):
    """uint8 (n, 32, 32) images: grey noise, a central blob on the positives."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * (SIZE / 6) ** 2))
    x = 0.5 + 0.1 * rng.standard_normal((n, SIZE, SIZE)) + 0.3 * y[:, None, None] * blob
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), y


def _write_shard(path, images, labels, first_patient: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=labels.astype(np.int8))
        f.create_dataset("image_index", data=np.array([f"{i:05d}.png" for i in range(n)], "S"))
        f.create_dataset(
            "patient_id", data=np.arange(first_patient, first_patient + n, dtype=np.int32)
        )
    return path


@pytest.fixture(scope="module")
def blob_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("blob")
    out = {}
    for split, n, seed, first in (
        ("train", 256, 0, 0),
        ("val", 64, 1, 1000),
        ("test", 128, 2, 2000),
    ):
        images, labels = _blob_images(n, seed)
        out[split] = [_write_shard(base / split / "000.h5", images, labels, first)]
    return out


def _init(model_dir):
    return {
        "checkpoint": model_dir / "model.keras",
        "metrics": model_dir / "metrics.json",
        "patients": model_dir / "train_patients.txt",
    }


@pytest.fixture(scope="module")
def trained_pair(blob_shards, tmp_path_factory):
    """An undefended model (patients 0-191) and the same model fine-tuned adversarially
    (PGD AT, init_from, patients 64-255), both through train_model."""
    base = tmp_path_factory.mktemp("pair")
    s = blob_shards
    clean = train_model(
        _settings(), s["train"], s["val"], s["test"], base / "clean", patients=set(range(192))
    )
    robust = train_model(
        _settings(name="blob_at", epochs=5, learning_rate=0.001, adversarial=ADV, init_from="blob"),
        s["train"],
        s["val"],
        s["test"],
        base / "robust",
        patients=set(range(64, 256)),
        init=_init(base / "clean"),
        make_trainer=AT.make_trainer,
        make_val_attack=AT.make_val_attack,
    )
    return {"clean": (base / "clean", clean), "robust": (base / "robust", robust)}


def _load(model_dir):
    import keras

    return keras.models.load_model(model_dir / "model.keras", compile=False, safe_mode=True)


def _test_arrays(shards):
    with h5py.File(shards["test"][0], "r") as f:
        x = f["images"][...][..., None].astype(np.float32) / 255.0
        y = f["labels"][...].astype(np.int32)
    return x, y


# --- (a) the adversarial batch ------------------------------------------------------------


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_batch_is_in_budget_and_replaces_the_fraction(
    trained_pair, blob_shards, method
):
    model = _load(trained_pair["clean"][0])
    x, y = _test_arrays(blob_shards)
    x, y = x[:11], y[:11]
    adv = {**ADV, "method": method, "fraction": 0.5}
    craft = AT.make_crafter(model, adv)
    seed = AT.step_seed(AT.base_seed(adv, 1), 7)
    x_mix, k = AT.adversarial_batch(craft, x, y, adv["fraction"], seed)
    x_mix, k = np.asarray(x_mix), int(k)
    assert k == 6  # round(0.5 * 11), halves up
    d = np.abs(x_mix - x).reshape(len(x), -1).max(axis=1)
    assert d.max() <= EPS / 255 + 1e-6 and x_mix.min() >= 0 and x_mix.max() <= 1
    assert np.all(d[:k] > 0) and np.all(d[k:] == 0)  # the first k perturbed, the rest clean
    assert d[:k].max() > 0.5 * EPS / 255  # the attack used its budget
    again, _ = AT.adversarial_batch(craft, x, y, adv["fraction"], seed)
    assert np.array_equal(np.asarray(again), x_mix)  # a pure function of (batch, seed)
    if method == "pgd":  # the adversarial half is the study's PGD with the same spec and seed
        from cxrtransfer.attacks.iterative import make_attack

        ref = make_attack(model, AT.spec_from_settings(adv))(x[:k], y[:k], np.asarray(seed))
        assert np.array_equal(np.asarray(ref), x_mix[:k])


def test_fraction_counts():
    assert [int(AT.n_adversarial(n, f)) for n, f in ((32, 0.5), (7, 0.5), (32, 0), (5, 1))] == [
        16,
        4,
        0,
        5,
    ]


# --- (b) the TRADES objective --------------------------------------------------------------


def test_trades_loss_matches_the_formula():
    p_clean = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.02, 0.98], [0.6, 0.4]], np.float32)
    p_adv = np.array([[0.6, 0.4], [0.55, 0.45], [0.1, 0.9]], np.float32)  # first 3 rows
    y = np.array([0, 1, 1, 1, 0])
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    beta = 6.0
    p64, q64 = p_clean.astype(np.float64), p_adv.astype(np.float64)
    ce = -np.log(p64[np.arange(5), y])
    kl = np.sum(p64[:3] * (np.log(p64[:3]) - np.log(q64)), axis=1)
    assert float(AT.trades_loss(y, p_clean, p_adv, beta)) == pytest.approx(
        ce.mean() + beta * kl.mean(), rel=1e-5
    )
    weighted = (w * ce).sum() / 5 + beta * (w[:3] * kl).sum() / 3
    assert float(AT.trades_loss(y, p_clean, p_adv, beta, w)) == pytest.approx(weighted, rel=1e-5)
    assert float(AT.trades_loss(y, p_clean, p_clean[:0], beta)) == pytest.approx(
        ce.mean(), rel=1e-5
    )


def _short_fit(settings, x, y):
    from cxrtransfer.models.trainable import compiled_model, contract_model, deterministic_ops

    with deterministic_ops(settings["seed"]):
        model = compiled_model(settings, 2, make_trainer=AT.make_trainer)
        before = contract_model(model).get_weights()
        hist = model.fit(
            x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, class_weight={0: 1.0, 1: 2.0}
        )
    return before, contract_model(model).get_weights(), hist.history["loss"]


def test_trades_training_step_runs_in_fit(blob_shards):
    """A TRADES epoch through fit (compiled train step, class weights): finite loss, the
    weights move."""
    x, y = _test_arrays(blob_shards)
    s = _settings(adversarial={**ADV, "method": "trades", "fraction": 1.0})
    before, after, loss = _short_fit(s, x[:32], y[:32])
    assert np.isfinite(loss).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# --- (c) robustness gained -----------------------------------------------------------------


def _accuracy_under_pgd(model, x, y, threshold: float) -> tuple[float, float]:
    """Clean and white-box PGD (10 steps of eps/4, random start, at the training eps)
    accuracy at the model's threshold."""
    from cxrtransfer.attacks.iterative import make_attack
    from cxrtransfer.attacks.spec import spec_from_config

    spec = spec_from_config(
        {"method": "pgd", "steps": 10, "step_fraction": 0.25, "random_start": True}, EPS
    )
    x_adv = np.asarray(make_attack(model, spec)(x, y))
    clean = (np.asarray(model(x, training=False))[:, 1] >= threshold) == y
    attacked = (np.asarray(model(x_adv, training=False))[:, 1] >= threshold) == y
    return float(clean.mean()), float(attacked.mean())


def test_adversarially_trained_model_resists_white_box_pgd(trained_pair, blob_shards):
    x, y = _test_arrays(blob_shards)
    acc = {}
    for name, (path, metrics) in trained_pair.items():
        acc[name] = _accuracy_under_pgd(_load(path), x, y, metrics["threshold"])
    print(acc)
    assert acc["clean"][0] >= 0.9 and acc["robust"][0] >= 0.8  # both learnt the task
    assert acc["clean"][1] <= 0.2  # the undefended model falls to PGD at eps 8/255
    assert acc["robust"][1] >= acc["clean"][1] + 0.25


# --- (d) init_from and what a fine-tuned model records -----------------------------------------


def test_fine_tuned_model_records_its_start_and_patients(trained_pair):
    clean_dir, clean = trained_pair["clean"]
    robust_dir, robust = trained_pair["robust"]
    saved = json.loads((robust_dir / "metrics.json").read_text())
    assert saved["adversarial"] == {**AT.ADVERSARIAL_DEFAULTS, **ADV}
    assert saved["init_from"] == {
        "model": "blob",
        "checkpoint_sha256": clean["checkpoint_sha256"],
        "val_auc": clean["val"]["auc"],
        "test_auc": clean["test"]["auc"],
    }
    assert saved["inputs"]["init_sha256"] == clean["checkpoint_sha256"]
    # its own patients (64-255) and those of the model it started from (0-191)
    patients = [int(p) for p in (robust_dir / "train_patients.txt").read_text().split()]
    assert patients == list(range(256)) and saved["train_patients"]["n"] == 256
    assert "init_from" not in clean and "adversarial" not in clean
    model = _load(robust_dir)  # the model contract: standard layers, pixels in, 2-class out
    assert model.input_shape == (None, SIZE, SIZE, 1) and model.output_shape == (None, 2)


@pytest.mark.parametrize("adversarial", [False, True])
def test_init_from_starts_from_the_checkpoint(trained_pair, adversarial):
    from cxrtransfer.models.trainable import compiled_model, contract_model, deterministic_ops

    clean_dir, _ = trained_pair["clean"]
    s = _settings(init_from="blob", **({"adversarial": ADV} if adversarial else {}))
    with deterministic_ops(1):
        model = compiled_model(
            s, 8, init_checkpoint=clean_dir / "model.keras", make_trainer=AT.make_trainer
        )
    start = contract_model(model).get_weights()
    init = _load(clean_dir).get_weights()
    assert len(start) == len(init) and all(
        np.array_equal(a, b) for a, b in zip(start, init, strict=True)
    )
    assert hasattr(model, "contract_model") == adversarial


def test_stamp_follows_the_init_checkpoint(trained_pair, blob_shards, tmp_path):
    clean_dir, _ = trained_pair["clean"]
    ckpt = tmp_path / "init.keras"
    shutil.copyfile(clean_dir / "model.keras", ckpt)
    s = _settings(init_from="blob")
    args = (s, blob_shards["train"], blob_shards["val"], [1, 2])
    first = inputs_stamp(*args, init_checkpoint=ckpt)
    assert first == inputs_stamp(*args, init_checkpoint=ckpt)
    assert "init_sha256" not in inputs_stamp(*args)  # clean models keep their stamps
    shutil.copyfile(trained_pair["robust"][0] / "model.keras", ckpt)  # retrained init model
    assert inputs_stamp(*args, init_checkpoint=ckpt) != first


def test_init_checkpoint_other_than_its_metrics_is_refused(trained_pair, blob_shards, tmp_path):
    clean_dir, _ = trained_pair["clean"]
    fake = tmp_path / "init"
    shutil.copytree(clean_dir, fake, ignore=shutil.ignore_patterns("tensorboard"))
    shutil.copyfile(trained_pair["robust"][0] / "model.keras", fake / "model.keras")
    s = blob_shards
    with pytest.raises(WorkflowError, match="not the one its metrics.json describes"):
        train_model(
            _settings(name="x", init_from="blob"),
            s["train"],
            s["val"],
            s["test"],
            tmp_path / "m",
            init=_init(fake),
        )


# --- settings, code version -----------------------------------------------------------------


def test_settings_fill_defaults_and_clean_models_are_unchanged(root):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    clean = model_settings(cfg, "pneumothorax_small")
    assert "adversarial" not in clean and "init_from" not in clean
    cfg["models"]["pneumothorax_small_s2"]["training"] = {"adversarial": {"eps": 4}}
    cfg["models"]["pneumothorax_small_s2"]["init_from"] = "pneumothorax_small"
    s = model_settings(cfg, "pneumothorax_small_s2")
    # written out: the schema's defaults of training.adversarial, read once by hand
    assert s["adversarial"] == {
        "eps": 4,
        "steps": 3,
        "step_fraction": 0.5,
        "fraction": 0.5,
        "method": "pgd",
        "trades_beta": 6.0,
        "random_start": True,
        "seed": 0,
        "val_steps": 10,
    }
    assert s["init_from"] == "pneumothorax_small"
    assert model_settings(cfg, "pneumothorax_small") == clean


# --- (e) config refusals --------------------------------------------------------------------


@pytest.fixture
def tiny_config(root):
    from snakemake.utils import validate

    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    return cfg


def _adv(cfg, model, **adv):
    cfg["models"][model]["training"] = {"adversarial": {"eps": 4, **adv}}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["training"].update(adversarial={"eps": 300}), r"^training\.adversarial\.eps"),
        (
            lambda c: _adv(c, "pneumothorax_small", eps=256),
            r"^models\.pneumothorax_small\.training\.adversarial\.eps.*data range",
        ),
        (
            lambda c: _adv(c, "pneumothorax_small", eps=0),
            r"models\.pneumothorax_small\.training\.adversarial\.eps",
        ),
        (
            lambda c: c["models"]["pneumothorax_small"].update(init_from="nobody"),
            r"models\.pneumothorax_small\.init_from: 'nobody' is not a configured model",
        ),
        (
            lambda c: c["models"]["pneumothorax_small"].update(init_from="pneumothorax_small"),
            r"models\.pneumothorax_small\.init_from: .*itself",
        ),
        (
            lambda c: c["models"]["pneumothorax_small"].update(init_from="cardiomegaly_small"),
            r"models\.pneumothorax_small\.init_from: .*task",
        ),
        (
            lambda c: (
                c["models"]["pneumothorax_small_s2"].update(arch="MobileNet")
                or c["models"]["pneumothorax_small"].update(init_from="pneumothorax_small_s2")
            ),
            r"models\.pneumothorax_small\.init_from: .*arch",
        ),
        (
            lambda c: (
                c["models"]["pneumothorax_small"].update(init_from="pneumothorax_small_s2")
                or c["models"]["pneumothorax_small_s2"].update(init_from="pneumothorax_small")
            ),
            r"models\.pneumothorax_small\.init_from: .*cycle",
        ),
    ],
)
def test_config_refusals_name_the_key(root, tiny_config, mutate, match):
    bad = copy.deepcopy(tiny_config)
    mutate(bad)
    with pytest.raises(WorkflowError, match=match):
        checks.check_config(bad, root)


def test_schema_refuses_eps_beyond_the_data_range(root, tiny_config):
    from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
    from snakemake.utils import validate

    schema = str(root / "config" / "config.schema.yaml")
    bad = copy.deepcopy(tiny_config)
    _adv(bad, "pneumothorax_small", eps=300)
    with pytest.raises(SnakemakeWorkflowError, match="adversarial"):
        validate(bad, schema)
    bad = copy.deepcopy(tiny_config)
    _adv(bad, "pneumothorax_small", method="fgsm")
    with pytest.raises(SnakemakeWorkflowError, match="fgsm"):
        validate(bad, schema)


def test_valid_adversarial_config_passes(root, tiny_config):
    from snakemake.utils import validate

    cfg = copy.deepcopy(tiny_config)
    cfg["models"]["pneumothorax_at"] = {
        "task": "pneumothorax",
        "arch": "MobileNetV3Small",
        "seed": 3,
        "train_subset": "half_a",
        "init_from": "pneumothorax_small",
        "training": {"adversarial": {"eps": 8, "method": "trades", "fraction": 1}},
    }
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    checks.check_config(cfg, root)
    s = model_settings(cfg, "pneumothorax_at")
    assert s["adversarial"]["trades_beta"] == 6.0 and s["adversarial"]["steps"] == 3
