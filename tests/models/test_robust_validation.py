"""Robust validation of adversarially trained models: the monitored key chooses the kept epoch
(planted histories, a resumed run's best from log.csv, later ties), the robustness gate on
planted numbers, the record with and without a base, and a tiny adversarial training whose
history and metrics.json carry the robust validation AUROC."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import training_settings
from cxrtransfer import WorkflowError
from cxrtransfer.core.files import file_sha256
from cxrtransfer.models import callbacks as C
from cxrtransfer.models.gate import check_robustness
from cxrtransfer.models.robust import NO_BASE_NOTE, base_of, robust_record

ADV = {"eps": 2.0, "steps": 1, "fraction": 0.5, "val_steps": 4}
# epoch 2 has the best clean AUROC, epoch 5 the best robust one (0-based rows)
PLANTED = pd.DataFrame(
    {
        "epoch": range(6),
        "val_auc": [0.60, 0.70, 0.90, 0.80, 0.85, 0.80],
        "val_robust_auc": [0.30, 0.40, 0.50, 0.55, 0.50, 0.60],
    }
)


def _settings(**kw):
    return training_settings(
        **{
            "name": "tiny_at",
            "task": "pneumothorax",
            "label": "Pneumothorax",
            "arch": "MobileNetV3Small",
            "image_size": 64,
            "epochs": 2,
            "min_val_auc": 0.6,
            "patience": 10,
            **kw,
        }
    )


# --- which epoch is kept ----------------------------------------------------------------------


def test_the_monitored_key_chooses_the_kept_epoch():
    robust, clean = _settings(adversarial=ADV), _settings()
    assert C.monitored_key(robust) == "val_robust_auc" and C.monitored_key(clean) == "val_auc"
    assert C.best_row(PLANTED, robust) == 5
    assert C.best_row(PLANTED, clean) == 2


def test_ties_keep_the_later_epoch_for_adversarial_training_only():
    ties = PLANTED.assign(
        val_auc=[0.6, 0.9, 0.5, 0.9, 0.4, 0.2], val_robust_auc=[0.3, 0.6, 0.5, 0.6, 0.4, 0.2]
    )
    assert C.best_row(ties, _settings(adversarial=ADV)) == 3
    assert C.best_row(ties, _settings()) == 1


def _resumed_callbacks(tmp_path, settings):
    """The callbacks of a run resumed after the PLANTED epochs (their log.csv)."""
    work = tmp_path / "work"
    work.mkdir()
    PLANTED.assign(loss=0.5).to_csv(work / "log.csv", index=False)
    robust = (lambda model, holder: 0.0) if settings.get("adversarial") else None
    found = C.training_callbacks(tmp_path, work, settings, lambda m, h: None, robust)
    return {type(cb).__name__: cb for cb in found}


@pytest.mark.parametrize(
    ("adversarial", "key", "best", "wait"),
    [(True, "val_robust_auc", 0.6, 0), (False, "val_auc", 0.9, 3)],
)
def test_a_resumed_run_picks_up_the_monitored_best(tmp_path, adversarial, key, best, wait):
    s = _settings(**({"adversarial": ADV} if adversarial else {}))
    found = _resumed_callbacks(tmp_path, s)
    assert found["BestCheckpoint"].best == pytest.approx(best)
    stop = found["ResumableEarlyStopping"]
    stop.on_train_begin()
    assert stop.monitor == key and stop.best == pytest.approx(best) and stop.wait == wait


def _tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64, 64, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def test_the_best_checkpoint_follows_the_robust_auroc_and_keeps_later_ties(tmp_path):
    found = _resumed_callbacks(tmp_path, _settings(adversarial=ADV))
    best = found["BestCheckpoint"]
    best.set_model(_tiny_model(0))
    path = tmp_path / "work" / "best.keras"
    for robust, saved in ((0.59, False), (0.99, True), (0.99, True), (0.5, False)):
        path.unlink(missing_ok=True)
        best.on_epoch_end(6, {"val_auc": 0.99 - robust, "val_robust_auc": robust})
        assert path.is_file() == saved
    assert best.best == pytest.approx(0.99)


def test_an_adversarial_run_without_the_robust_attack_is_refused(tmp_path):
    with pytest.raises(ValueError, match="robust_fn"):
        C.training_callbacks(tmp_path, tmp_path, _settings(adversarial=ADV), lambda m, h: None)


# --- the robustness gate ---------------------------------------------------------------------


def _record(mine: float, theirs: float | None) -> dict:
    base = (
        None if theirs is None else {"model": "b", "via": "robust_base", "val_robust_auc": theirs}
    )
    return {
        "val_robust_auc": mine,
        "val_robust_auc_ci": [mine - 0.1, mine + 0.1],
        "attack": {"steps": 10},
        "robust_base": base,
    }


@pytest.mark.parametrize(("mine", "theirs"), [(0.41, 0.52), (0.52, 0.52), (float("nan"), 0.3)])
def test_the_gate_refuses_a_model_not_more_robust_than_its_base(mine, theirs):
    s = _settings(adversarial=ADV)
    with pytest.raises(WorkflowError) as err:
        check_robustness(s, _record(mine, theirs))
    text = str(err.value)
    assert f"{mine:.3f}" in text and f"{theirs:.3f}" in text and "eps 2/255" in text
    assert "'b' (robust_base)" in text and "fraction: 1.0" in text and "epochs" in text


@pytest.mark.parametrize(
    ("mine", "theirs", "min_val_auc"), [(0.53, 0.52, 0.6), (0.3, None, 0.6), (0.3, 0.9, 0.0)]
)
def test_the_gate_passes_a_more_robust_model_one_without_base_or_with_gates_off(
    mine, theirs, min_val_auc
):
    check_robustness(_settings(adversarial=ADV, min_val_auc=min_val_auc), _record(mine, theirs))


def test_the_base_is_init_from_else_robust_base(tmp_path):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    s = _settings(adversarial=ADV, init_from="start", robust_base="start")
    assert base_of(s, a, None) == {"model": "start", "via": "init_from", "checkpoint": a}
    s = _settings(adversarial=ADV, robust_base="other")
    assert base_of(s, None, b) == {"model": "other", "via": "robust_base", "checkpoint": b}
    assert base_of(_settings(adversarial=ADV), None, None) is None


# --- the record, on real images with a planted attack ------------------------------------------


def _unattacked(model, adv):
    """A stand-in for the attacks stage's make_val_attack: leaves the images as they are."""

    def attack(x, y):
        return x

    attack.rule = {"attack": "none", "eps": adv["eps"]}
    return attack


def _clean_auc(model, shards) -> float:
    from cxrtransfer.models.inference import predict_shards
    from sklearn.metrics import roc_auc_score

    val = predict_shards(model, shards, 64)
    return float(roc_auc_score(val["labels"], val["probs"]))


def test_the_record_without_a_base_says_so_and_does_not_fail(pneumothorax_shards, caplog):
    caplog.set_level(logging.WARNING, logger="cxrtransfer")
    model, val = _tiny_model(1), pneumothorax_shards["val"]
    s = _settings(adversarial=ADV)
    record = robust_record(s, model, val, _unattacked, None)
    assert record["robust_base"] is None and record["note"] == NO_BASE_NOTE
    assert record["monitored"] == "val_robust_auc" and record["attack"]["attack"] == "none"
    # unattacked images: the robust AUROC is the clean one, inside its bootstrap CI
    assert record["val_robust_auc"] == pytest.approx(_clean_auc(model, val), abs=1e-6)
    low, high = record["val_robust_auc_ci"]
    assert low <= record["val_robust_auc"] <= high and "bootstrap" in record["ci_rule"]
    assert any("no base model" in r.getMessage() for r in caplog.records)
    check_robustness(s, record)  # nothing to compare: no refusal


def test_the_record_of_a_base_attacks_it_the_same_way(pneumothorax_shards, tmp_path):
    model, other, val = _tiny_model(1), _tiny_model(2), pneumothorax_shards["val"]
    other.save(tmp_path / "base.keras")
    base = {"model": "b", "via": "robust_base", "checkpoint": tmp_path / "base.keras"}
    record = robust_record(_settings(adversarial=ADV), model, val, _unattacked, base)
    assert record["robust_base"] == {
        "model": "b",
        "via": "robust_base",
        "checkpoint_sha256": file_sha256(tmp_path / "base.keras"),
        "val_robust_auc": pytest.approx(_clean_auc(other, val), abs=1e-6),
    }
    assert "note" not in record


# --- a tiny adversarial training -------------------------------------------------------------


@pytest.fixture(scope="module")
def robust_run(pneumothorax_shards, tmp_path_factory):
    """A 2-epoch PGD-trained MobileNetV3Small (64 px) against a planted base checkpoint."""
    from cxrtransfer.attacks import adversarial_training as AT
    from cxrtransfer.models.train import train_model

    out = tmp_path_factory.mktemp("robust")
    _tiny_model(3).save(out / "base.keras")
    s = pneumothorax_shards
    settings = _settings(adversarial=ADV, robust_base="planted", min_val_auc=0.0, bn_momentum=0.5)
    metrics = train_model(
        settings,
        s["train"],
        s["val"],
        s["test"],
        out / "m",
        make_trainer=AT.make_trainer,
        make_val_attack=AT.make_val_attack,
        robust_base=out / "base.keras",
    )
    return out, metrics


def _pgd_auc(model, shards) -> float:
    """AUROC under L-inf PGD at eps 2/255, 4 steps of eps/4, no random start (by hand)."""
    import h5py
    from cxrtransfer.attacks.iterative import make_attack
    from cxrtransfer.attacks.spec import spec_from_config
    from sklearn.metrics import roc_auc_score

    spec = spec_from_config(
        {"method": "pgd", "steps": 4, "step_fraction": 0.25, "random_start": False}, 2.0
    )
    attack, labels, probs = make_attack(model, spec), [], []
    for path in shards:
        with h5py.File(path, "r") as f:
            x = f["images"][...][..., None].astype(np.float32) / 255.0
            y = f["labels"][...].astype(np.int32)
        probs.append(np.asarray(model(attack(x, y), training=False))[:, 1])
        labels.append(y)
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(probs)))


def test_history_and_metrics_carry_the_robust_validation(robust_run, pneumothorax_shards):
    import keras

    out, _ = robust_run
    history = pd.read_csv(out / "m" / "history.csv")
    saved = json.loads((out / "m" / "metrics.json").read_text())
    assert len(history) == 2 and history["val_robust_auc"].between(0, 1).all()
    assert saved["selected_by"] == "val_robust_auc"
    row = C.best_row(history, saved["settings"])
    assert saved["best_epoch"] == int(history["epoch"].iloc[row]) + 1
    robust = saved["robust_validation"]
    # the kept epoch's number, recomputed on the saved checkpoint: the attack is deterministic
    assert robust["val_robust_auc"] == pytest.approx(history["val_robust_auc"].iloc[row], abs=1e-6)
    low, high = robust["val_robust_auc_ci"]
    assert low <= robust["val_robust_auc"] <= high
    assert robust["attack"] == {
        "attack": "pgd",
        "norm": "linf",
        "eps": 2.0,
        "steps": 4,
        "step": 0.5,
        "step_fraction": 0.25,
        "random_start": False,
        "targeted": False,
        "images": "the validation split",
        "against": "the weights evaluated (white-box)",
    }
    assert robust["monitored"] == "val_robust_auc"
    base = robust["robust_base"]
    assert base["model"] == "planted" and base["via"] == "robust_base"
    assert base["checkpoint_sha256"] == file_sha256(out / "base.keras")
    planted = keras.models.load_model(out / "base.keras", compile=False)
    val = pneumothorax_shards["val"]
    assert base["val_robust_auc"] == pytest.approx(_pgd_auc(planted, val), abs=1e-6)
    model = keras.models.load_model(out / "m" / "model.keras", compile=False)
    assert robust["val_robust_auc"] == pytest.approx(_pgd_auc(model, val), abs=1e-6)
