"""Fine-tune one model from the HDF5 shards: checkpoint every epoch, resume, select by val AUC
(an adversarially trained model: by robust val AUC, and it must be more robust than its base).

Outputs in ``out_dir`` (only when training finished and the model passed the quality checks,
which read validation data only): ``model.keras`` (weights, no optimizer state),
``history.csv``, ``train_patients.txt`` and ``metrics.json`` (written last). Work state lives
in ``out_dir/work`` (Keras BackupAndRestore state, best checkpoint, CSV log, a stamp of the
settings and of the train/val data content) and ``out_dir/tensorboard``; a killed job resumes
from its last completed epoch only if settings and data are unchanged. The work state is
deleted after a successful run. Seeded runs on the same machine repeat bit for bit.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import atomic_path, file_sha256, params_hash
from cxrtransfer.core.logs import LOG
from cxrtransfer.core.products import read_model_metrics, read_patients
from cxrtransfer.data.datasets import label_summary, shard_arrays
from cxrtransfer.models.callbacks import (
    best_row,
    monitored_key,
    previous_history,
    training_callbacks,
)
from cxrtransfer.models.gate import (
    check_multilabel_quality,
    check_quality,
    check_robustness,
    gate_ci,
)
from cxrtransfer.models.inference import make_predict_fn, predict_shards
from cxrtransfer.models.outputs import (
    MULTILABEL_LOSS,
    OUTPUT_FILES,
    THRESHOLD_RULE,
    binary_metrics,
    measure_test_split,
    multilabel_metrics,
    output_record,
    write_outputs,
    youden_threshold,
)
from cxrtransfer.models.robust import base_of, robust_fn, robust_record
from cxrtransfer.models.settings import ADVERSARIAL_DEFAULTS, adversarial_cost, is_multilabel
from cxrtransfer.models.trainable import compiled_model, deterministic_ops

# Bump when the meaning of the work state changes: older work directories are then discarded.
# 3: adversarially trained models keep the epoch of the best robust validation AUROC.
WORK_STATE_VERSION = 3


def inputs_stamp(
    settings: dict, train_shards, val_shards, train_patients: list[int], init_checkpoint=None
) -> dict:
    """What the training state depends on: the settings, the CONTENT of the train and val
    shards (sha256 of each file, in order), the training patients actually used and, for a
    model fine-tuned from another (``init_from``), the sha256 of that checkpoint."""
    stamp = {
        "version": WORK_STATE_VERSION,
        "settings": settings,
        "train_sha256": [file_sha256(p) for p in train_shards],
        "val_sha256": [file_sha256(p) for p in val_shards],
        "train_patients_sha256": params_hash(train_patients),
    }
    if init_checkpoint is not None:
        stamp["init_sha256"] = file_sha256(init_checkpoint)
    return stamp


def prepare_work(out: Path, stamp: dict) -> bool:
    """Make ``out/work`` hold state of exactly these inputs; True if it resumes an earlier run.

    State of other settings or other data (or without a stamp) is deleted together with the
    TensorBoard logs, so nothing of another run is resumed, appended to or published.
    """
    work = out / "work"
    stamp_file = work / "stamp.json"
    digest = params_hash(stamp)
    try:
        old = json.loads(stamp_file.read_text()).get("hash")
    except (OSError, ValueError):
        old = None
    resume = old == digest
    if not resume:
        if work.exists():
            LOG.info("work state in %s is of other settings or data: starting over", work)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not resume:
        with atomic_path(stamp_file) as tmp:
            tmp.write_text(json.dumps({"hash": digest, **stamp}, indent=2, default=str))
    else:
        LOG.info("resuming the interrupted run in %s", work)
    return resume


def _training_counts(settings: dict, train_shards, val_shards, patients) -> dict:
    """Label counts of the train (patient subset) and val data; both classes required."""
    size = settings["image_size"]
    if is_multilabel(settings):
        return _multilabel_counts(settings, train_shards, val_shards, patients)
    train = label_summary(train_shards, size, patients)
    n0, n1 = train["n0"], train["n1"]
    if n0 == 0 or n1 == 0:
        raise WorkflowError(
            f"Model '{settings['name']}': the training data has {n1} positives and {n0} "
            f"negatives ({', '.join(map(str, train_shards[:2]))}...); a binary classifier "
            "needs both."
        )
    val = label_summary(val_shards, size)
    if val["n0"] == 0 or val["n1"] == 0:
        raise WorkflowError(
            f"Model '{settings['name']}': the validation split has {val['n1']} positives and "
            f"{val['n0']} negatives; validation AUROC is undefined. Use more data or a larger "
            "val_fraction."
        )
    n = n0 + n1
    balanced = settings["class_weight"] == "balanced"
    return {
        "n": n,
        "n1": n1,
        "n_val": val["n0"] + val["n1"],
        "class_weight": balanced_class_weight(n0, n1) if balanced else None,
        "patient_ids": train["patient_ids"],
    }


def balanced_class_weight(n0: int, n1: int) -> dict[int, float]:
    """Keras class weights of a binary training set of ``n0`` negatives and ``n1`` positives:
    scikit-learn's "balanced" weights, n / (2 n_c), so each class weighs n / 2 in the loss."""
    # heavy: scikit-learn (with scipy) loads in the training jobs only, not when the rule script
    # imports this module before its log is set up
    from sklearn.utils.class_weight import compute_class_weight

    y = np.repeat([0, 1], [n0, n1])
    w = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    return {0: float(w[0]), 1: float(w[1])}


def _multilabel_counts(settings: dict, train_shards, val_shards, patients) -> dict:
    """A multi-label model's training counts: images, per-label positives of train and val;
    validation needs at least one label with both classes (the checkpoint metric)."""
    size, labels = settings["image_size"], settings["labels"]
    train = label_summary(train_shards, size, patients)
    pos = np.zeros(len(labels), np.int64)
    for _, t, _ in shard_arrays(train_shards, size, patients, targets=True):
        _check_targets(settings, t, train_shards)
        pos += t.sum(axis=0).astype(np.int64)
    val_pos, n_val = np.zeros(len(labels), np.int64), 0
    for _, t, _ in shard_arrays(val_shards, size, targets=True):
        _check_targets(settings, t, val_shards)
        val_pos += t.sum(axis=0).astype(np.int64)
        n_val += len(t)
    n = train["n0"] + train["n1"]
    scored = [lab for lab, k in zip(labels, val_pos, strict=True) if 0 < k < n_val]
    if not scored:
        raise WorkflowError(
            f"Model '{settings['name']}': no label of {labels} has both classes in the "
            "validation split; validation AUROC is undefined. Use more data or a larger "
            "val_fraction."
        )
    absent = [lab for lab, k in zip(labels, pos, strict=True) if k == 0]
    if absent:
        LOG.warning(
            "model %s: no training image has %s (their outputs learn 'absent' only)",
            settings["name"],
            ", ".join(absent),
        )
    return {
        "n": n,
        "n1": train["n1"],
        "n_val": n_val,
        "class_weight": None,  # unweighted binary cross-entropy (README "Multi-label models")
        "patient_ids": train["patient_ids"],
        "positives_per_label": dict(zip(labels, pos.tolist(), strict=True)),
        "val_labels_scored": scored,
    }


def _check_targets(settings: dict, targets: np.ndarray, shards) -> None:
    if targets.shape[1] != len(settings["labels"]):
        raise WorkflowError(
            f"Model '{settings['name']}': the shards ({shards[0]}, ...) hold {targets.shape[1]} "
            f"target columns, the model's task has {len(settings['labels'])} labels; rebuild "
            "the task's shards (the task's labels changed?)."
        )


def _log_start(settings: dict, counts: dict, init) -> None:
    """What a training run is about to do: data, start weights, adversarial and output setup."""
    LOG.info(
        "model %s: %s (%s) on %d train images (%d positive), %d val; class weights %s",
        settings["name"],
        settings["arch"],
        settings["pretrained"],
        counts["n"],
        counts["n1"],
        counts["n_val"],
        counts["class_weight"],
    )
    if init is not None:
        LOG.info("starting from the weights of %s (%s)", settings.get("init_from"), init)
    adv = settings.get("adversarial")
    if adv:
        LOG.info(
            "adversarial training: %s, L-inf eps %g/255, %d steps of %g eps, %g of each batch, "
            "about %.1fx the cost of a clean epoch",
            adv["method"],
            adv["eps"],
            adv["steps"],
            adv["step_fraction"],
            adv["fraction"],
            adversarial_cost(adv),
        )
        LOG.info(
            "robust validation each epoch: L-inf PGD at eps %g/255, %d steps of eps/4, no random "
            "start; the kept epoch is the best val_robust_auc",
            adv["eps"],
            adv["val_steps"],
        )
    if is_multilabel(settings):
        LOG.info(
            "multi-label model: %d sigmoid outputs %s, loss: %s",
            len(settings["labels"]),
            settings["labels"],
            MULTILABEL_LOSS,
        )


def _fit(
    settings: dict,
    train_shards,
    val_shards,
    patients,
    out: Path,
    counts: dict,
    init=None,
    make_trainer=None,
    make_val_attack=None,
) -> float:
    """Train (or continue the interrupted run in ``out/work``); returns wall time in seconds.
    A run that already finished (``work/fit_done``) is not trained further. ``init``: the
    checkpoint to start from (``init_from``), or None. ``make_val_attack``: an adversarially
    trained model's robust validation attack (see ``robust_fn``)."""
    # heavy: data.pipelines imports TensorFlow at its top; the train script imports this module
    # before run_main sends the job's output to its log
    from cxrtransfer.data.pipelines import make_dataset

    work = out / "work"
    done = work / "fit_done.json"
    if done.is_file():
        LOG.info("training of this state had finished; selecting and evaluating only")
        return float(json.loads(done.read_text())["wall_time_s"])
    size = settings["image_size"]
    _log_start(settings, counts, init)
    multi = is_multilabel(settings)
    with deterministic_ops(settings["seed"]):
        steps = int(np.ceil(counts["n"] / settings["batch_size"]))
        model = compiled_model(settings, steps, init_checkpoint=init, make_trainer=make_trainer)
        train_ds = make_dataset(
            train_shards,
            size,
            settings["batch_size"],
            shuffle=True,
            seed=settings["seed"],
            patients=patients,
            augment=settings["augment"] or None,
            n_images=counts["n"],
            n_targets=len(settings["labels"]) if multi else None,
        )

        def val_preds(m, holder):
            if not hasattr(holder, "predict_fn"):  # trace the compiled prediction once
                holder.predict_fn = make_predict_fn(m, all_columns=multi)
            r = predict_shards(m, val_shards, size, predict_fn=holder.predict_fn, multilabel=multi)
            return r["labels"], r["probs"]

        t0 = time.time()
        robust = robust_fn(settings, val_shards, make_val_attack)
        model.fit(
            train_ds,
            epochs=settings["epochs"],
            class_weight=counts["class_weight"],
            callbacks=training_callbacks(out, work, settings, val_preds, robust),
            shuffle=False,
            verbose=0,  # one line per epoch from ValAUC instead of Keras' progress bars
        )
        wall = time.time() - t0
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps({"wall_time_s": wall}))
    return wall


def _select(settings: dict, work: Path, val_shards):
    """The best checkpoint (by ``monitored_key``: val AUROC, for an adversarially trained model
    robust val AUROC), its Youden threshold on val and its val metrics; refuses collapsed
    models. Reads validation data only."""
    # heavy: Keras loads in training jobs only
    import keras

    if not (work / "best.keras").is_file():
        raise WorkflowError(
            f"Model '{settings['name']}': no checkpoint was saved (no epoch finished)."
        )
    best = keras.models.load_model(work / "best.keras", compile=False, safe_mode=True)
    if is_multilabel(settings):
        val = predict_shards(best, val_shards, settings["image_size"], multilabel=True)
        val_metrics = multilabel_metrics(val["labels"], val["probs"], settings["labels"])
        val_metrics.update(gate_ci(val, int(settings["seed"])))
        thresholds = {
            lab: youden_threshold(val["labels"][:, k], val["probs"][:, k])
            for k, lab in enumerate(settings["labels"])
            if val_metrics["auc_per_label"][lab] is not None
        }
        check_multilabel_quality(settings, val_metrics, val["probs"])
        return best, thresholds, val_metrics
    val = predict_shards(best, val_shards, settings["image_size"])
    threshold = youden_threshold(val["labels"], val["probs"])
    val_metrics = binary_metrics(val["labels"], val["probs"], threshold)
    val_metrics.update(gate_ci(val, int(settings["seed"])))
    check_quality(settings, val_metrics, val["probs"])
    return best, threshold, val_metrics


def read_init(settings: dict, init: dict) -> dict:
    """The model a fine-tuned model starts from (``init_from``): ``init`` holds the paths of its
    ``checkpoint`` (model.keras), ``metrics`` (metrics.json) and ``patients``
    (train_patients.txt). Returns what metrics.json records of it and its training patients;
    refuses a checkpoint that is not the one its metrics.json describes."""
    checkpoint = Path(init["checkpoint"])
    meta = read_model_metrics(init["metrics"])
    patients = sorted(read_patients(init["patients"]))
    sha = file_sha256(checkpoint)
    if meta.get("checkpoint_sha256") != sha:
        raise WorkflowError(
            f"Model '{settings['name']}': the init_from checkpoint '{checkpoint}' is not the one "
            f"its metrics.json describes (sha256 {sha[:12]} vs "
            f"{str(meta.get('checkpoint_sha256'))[:12]}); it is damaged or stale. Run "
            "`make verify REMOVE=1` and rerun."
        )
    return {
        "record": {
            "model": settings.get("init_from", meta.get("model")),
            "checkpoint_sha256": sha,
            "val_auc": meta.get("val", {}).get("auc"),
            "test_auc": meta.get("test", {}).get("auc"),
        },
        "patients": patients,
    }


def train_model(
    settings: dict,
    train_shards: list,
    val_shards: list,
    test_shards: list,
    out_dir: str | Path,
    patients: set[int] | None = None,
    init: dict | None = None,
    make_trainer=None,
    make_val_attack=None,
    robust_base: str | Path | None = None,
) -> dict:
    """Train, select by validation AUROC (adversarial training: robust validation AUROC),
    check quality on validation data, write model.keras, metrics.json, history.csv and
    train_patients.txt; then delete the work state.

    ``init``: for a model fine-tuned from another (``init_from``), the paths of that model's
    ``checkpoint``, ``metrics`` and ``patients`` (see ``read_init``). Its training patients
    count as this model's too (train_patients.txt holds the union), so measured patient
    overlap stays honest. ``make_trainer``: for adversarial training, the trainer that crafts
    each batch's examples (see ``compiled_model``); ``make_val_attack``: the attack of its
    robust validation (``robust_fn``). ``robust_base``: the checkpoint of the model of
    ``settings["robust_base"]``, the base of an adversarially trained model without
    ``init_from`` (see ``robust.base_of``); it must be more robust than its base."""
    out = Path(out_dir)
    work = out / "work"
    if settings.get("adversarial"):  # settings built without a validated config: defaults
        settings = {**settings, "adversarial": {**ADVERSARIAL_DEFAULTS, **settings["adversarial"]}}
    counts = _training_counts(settings, train_shards, val_shards, patients)
    start = read_init(settings, init) if init is not None else None
    checkpoint = Path(init["checkpoint"]) if init is not None else None
    stamp = inputs_stamp(settings, train_shards, val_shards, counts["patient_ids"], checkpoint)
    prepare_work(out, stamp)
    wall = _fit(
        settings,
        train_shards,
        val_shards,
        patients,
        out,
        counts,
        checkpoint,
        make_trainer,
        make_val_attack,
    )
    history = previous_history(work / "log.csv", monitored_key(settings))
    best, threshold, val_metrics = _select(settings, work, val_shards)
    robust = None
    if settings.get("adversarial"):
        with deterministic_ops(settings["seed"]):
            base = base_of(settings, checkpoint, robust_base)
            robust = robust_record(settings, best, val_shards, make_val_attack, base)
        check_robustness(settings, robust)
    test_metrics = measure_test_split(settings, best, test_shards, threshold)
    metrics = _metrics_record(
        settings, (threshold, val_metrics, test_metrics), history, counts, wall, stamp
    )
    patient_ids = counts["patient_ids"]
    if settings.get("adversarial"):
        metrics["adversarial"] = settings["adversarial"]
        metrics["robust_validation"] = robust
    if start is not None:
        metrics["init_from"] = start["record"]
        patient_ids = sorted(set(patient_ids) | set(start["patients"]))
    metrics = write_outputs(out, best, metrics, history, patient_ids)
    shutil.rmtree(work)
    multi = is_multilabel(settings)
    LOG.info(
        "model %s: val AUC %.3f, test AUC %.3f (%s), %d epochs, %.0f s",
        settings["name"],
        val_metrics["auc"],
        test_metrics["auc"],
        "mean over labels" if multi else f"threshold {threshold:.3f}",
        len(history),
        wall,
    )
    return {**metrics, "train_patients_path": str(out / "train_patients.txt")}


def _metrics_record(settings, quality, history, counts, wall: float, stamp: dict) -> dict:
    """metrics.json's record of the model: its threshold(s) and val and test metrics
    (``quality``), epochs, training images, inputs and settings (the caller adds the
    adversarial training's and init_from's records)."""
    threshold, val_metrics, test_metrics = quality
    multi = is_multilabel(settings)
    return {
        "model": settings["name"],
        "task": settings["task"],
        "arch": settings["arch"],
        **output_record(settings),
        # a multi-label model: per-label thresholds (its views M@T choose their own)
        "threshold": None if multi else threshold,
        **({"thresholds_per_label": threshold, "loss": MULTILABEL_LOSS} if multi else {}),
        "threshold_rule": THRESHOLD_RULE,
        "val": val_metrics,
        "test": test_metrics,
        "epochs_run": int(len(history)),
        "best_epoch": int(history["epoch"].iloc[best_row(history, settings)]) + 1,
        "selected_by": monitored_key(settings),
        "wall_time_s": round(wall, 1),
        "train_images": counts["n"],
        "train_positives": counts["n1"],
        **(
            {"train_positives_per_label": counts["positives_per_label"]}
            if "positives_per_label" in counts
            else {}
        ),
        "inputs": {k: v for k, v in stamp.items() if k != "settings"},
        "settings": settings,
    }
