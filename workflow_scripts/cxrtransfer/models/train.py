"""Fine-tune one model from the HDF5 shards: checkpoint every epoch, resume, select by val AUC.

Outputs in ``out_dir`` (only when training finished and the model passed the quality checks,
which read validation data only): ``model.keras`` (weights, no optimizer state),
``history.csv``, ``train_patients.txt`` and ``metrics.json`` (written last). Work state lives
in ``out_dir/work`` (Keras BackupAndRestore state, best checkpoint, CSV log, a stamp of the
settings and of the train/val data content) and ``out_dir/tensorboard``; a killed job resumes
from its last completed epoch only if settings and data are unchanged. The work state is
deleted after a successful run. Seeded runs on the same machine repeat bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.config.schema import defaults as schema_defaults
from cxrtransfer.core.files import atomic_path, file_sha256, params_hash, write_json
from cxrtransfer.core.logs import LOG

# Training defaults: the config schema's (one place), for settings built without a validated
# config (tests, benchmarks).
TRAINING_DEFAULTS = schema_defaults("training")
# Adversarial training (training.adversarial; off when absent): the defaults of its keys.
ADVERSARIAL_DEFAULTS = schema_defaults("training", "adversarial")


def model_settings(config: dict, name: str) -> dict:
    """Everything that defines model ``name``: its entry merged over the training defaults."""
    if name not in config["models"]:
        raise WorkflowError(f"Unknown model '{name}'; configured: {sorted(config['models'])}")
    m = dict(config["models"][name])
    training = {**TRAINING_DEFAULTS, **config.get("training", {}), **m.pop("training", {})}
    if "adversarial" in training:  # a model's own block replaces the default block as a whole
        training["adversarial"] = {**ADVERSARIAL_DEFAULTS, **training["adversarial"]}
    extra = {"init_from": m["init_from"]} if m.get("init_from") else {}
    task = config["tasks"][m["task"]]
    if "labels" in task:  # a multi-label model: its output columns, in order
        from cxrtransfer import LABELS

        labels = list(LABELS) if task["labels"] == "all" else list(task["labels"])
        finding = {"labels": labels}
    else:
        finding = {"label": task["label"]}
    return {
        "name": name,
        "task": m["task"],
        **finding,
        "arch": m["arch"],
        "seed": int(m["seed"]),
        "pretrained": m.get("pretrained", "none"),
        "train_subset": m.get("train_subset", "all"),
        "image_size": int(config["data"]["image_size"]),
        "split_seed": int(config.get("split", {}).get("seed", 42)),
        "augment": dict(config.get("augmentation", {})) if training["augmentation"] else {},
        **training,
        **extra,
    }


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """A model's quality on one split, with the metric definitions of ``metrics``."""
    from cxrtransfer.metrics import measures as M

    labels = np.asarray(labels).astype(int)
    pred = M.predict(probs, threshold)
    return {
        "auc": float(M.auroc(labels, probs)),
        "accuracy": float(M.accuracy(labels, pred)),
        "sensitivity": float(M.sensitivity(labels, pred)),
        "specificity": float(M.specificity(labels, pred)),
        "n": int(len(labels)),
        "positives": int(labels.sum()),
        "predicted_positive_fraction": float(np.mean(pred)),
    }


def is_multilabel(s: dict) -> bool:
    """Whether settings ``s`` are a multi-label model's (``labels``: its output columns)."""
    return "labels" in s


# What metrics.json records of a model's output (the model contract, README "Models and their
# contract"): ``output`` and ``output_columns``, the column names in output order.
SOFTMAX2 = "softmax2"
SIGMOID = "sigmoid"
NEGATIVE_COLUMN = "negative"  # column 0 of a 2-class model: 1 - p(finding)
MULTILABEL_LOSS = "binary cross-entropy per output, unweighted (class_weight is not applied)"


def output_record(s: dict) -> dict:
    """``output`` and ``output_columns`` of the model of settings ``s``."""
    if is_multilabel(s):
        return {"output": SIGMOID, "output_columns": list(s["labels"])}
    return {"output": SOFTMAX2, "output_columns": [NEGATIVE_COLUMN, s["label"]]}


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """A multi-label model's quality on one split: per-label AUROC (None where the split has
    one class of that label) and their mean over the labels with both classes."""
    from cxrtransfer.metrics import measures as M

    targets = np.asarray(targets).astype(int)
    per, positives = {}, {}
    for k, name in enumerate(labels):
        y = targets[:, k]
        positives[name] = int(y.sum())
        both = 0 < y.sum() < len(y)
        per[name] = float(M.auroc(y, probs[:, k])) if both else None
    scored = [v for v in per.values() if v is not None]
    return {
        "auc": float(np.mean(scored)) if scored else float("nan"),
        "auc_rule": "mean AUROC over the labels with both classes in this split",
        "auc_per_label": per,
        "labels_scored": len(scored),
        "n": int(len(targets)),
        "positives_per_label": positives,
    }


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on (validation) data."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, probs)
    j = tpr - fpr
    t = float(thr[int(np.argmax(j))])
    return min(max(t, 0.0), 1.0)


def _optimizer(s: dict, steps_per_epoch: int):
    import keras

    total = max(1, s["epochs"] * steps_per_epoch)
    warm = min(s["warmup_epochs"] * steps_per_epoch, total - 1)
    lr = s["learning_rate"]
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warm else lr,
        decay_steps=max(1, total - warm),
        alpha=0.05,
        warmup_target=lr if warm else None,
        warmup_steps=warm,
    )
    opt = s["optimizer"]
    if opt == "sgd":
        return keras.optimizers.SGD(schedule, momentum=s["momentum"])
    if opt == "adamw":
        return keras.optimizers.AdamW(schedule)
    if opt == "rmsprop":
        return keras.optimizers.RMSprop(schedule)
    return keras.optimizers.Adam(schedule)


def compiled_model(s: dict, steps_per_epoch: int, init_checkpoint=None, make_trainer=None):
    """The model of settings ``s``, compiled as training uses it (also used by the benchmark).

    ``init_checkpoint``: a finished checkpoint of the same architecture (``init_from``) whose
    weights the model starts from. With ``s["adversarial"]`` the returned model is
    ``make_trainer(model, s["adversarial"], s["seed"])``, the adversarial trainer around the
    contract model (``cxrtransfer.attacks.adversarial_training.make_trainer``: the models stage
    never imports attack code, the caller hands it in), which ``contract_model(model)`` gives
    back."""
    from cxrtransfer.models.build import build_model

    pretrained = "none" if init_checkpoint is not None else s["pretrained"]
    multi = is_multilabel(s)
    model = build_model(
        s["arch"],
        s["image_size"],
        pretrained,
        seed=s["seed"],
        bn_momentum=s["bn_momentum"],
        n_labels=len(s["labels"]) if multi else None,
    )
    if init_checkpoint is not None:
        load_init_weights(model, init_checkpoint, s)
    if s.get("adversarial"):
        if make_trainer is None:
            raise ValueError(
                "adversarial training settings need make_trainer "
                "(cxrtransfer.attacks.adversarial_training.make_trainer)"
            )
        model = make_trainer(model, s["adversarial"], s["seed"])
    model.compile(
        optimizer=_optimizer(s, steps_per_epoch),
        loss="binary_crossentropy" if multi else "sparse_categorical_crossentropy",
        metrics=["binary_accuracy" if multi else "accuracy"],
    )
    return model


def adversarial_cost(adv: dict) -> float:
    """Cost of an adversarial training epoch in clean epochs (forward-backward passes per
    image): 1 + fraction * steps for PGD; TRADES trains on the adversarial examples as well."""
    extra = 1 if adv["method"] == "trades" else 0
    return 1 + adv["fraction"] * (adv["steps"] + extra)


def contract_model(model):
    """The model that follows the model contract: ``model`` itself, or the model an adversarial
    trainer trains (what is evaluated and saved)."""
    return getattr(model, "contract_model", model)


def load_init_weights(model, path, s: dict) -> None:
    """Start ``model`` from the weights of the finished checkpoint ``path`` (``init_from``)."""
    from cxrtransfer.models.build import load_checkpoint

    init = load_checkpoint(path, s["image_size"], len(s["labels"]) if is_multilabel(s) else 2)
    src, dst = init.get_weights(), model.get_weights()
    if [w.shape for w in src] != [w.shape for w in dst]:
        raise WorkflowError(
            f"Model '{s['name']}': the init_from checkpoint '{path}' is not a {s['arch']} of "
            f"this workflow at {s['image_size']} px (its weights have other shapes); retrain "
            f"'{s.get('init_from')}' or fix models.{s['name']}.init_from."
        )
    model.set_weights(src)


def _callbacks(model_dir: Path, work: Path, s: dict, val_ds_fn):
    import keras

    class ValAUC(keras.callbacks.Callback):
        """Validation AUROC (scikit-learn) into the epoch logs as ``val_auc``."""

        def on_epoch_end(self, epoch, logs=None):
            y, p = val_ds_fn(contract_model(self.model), self)
            if is_multilabel(s):  # mean AUROC over the labels with both classes in val
                logs["val_auc"] = multilabel_metrics(y, p, s["labels"])["auc"]
            else:
                logs["val_auc"] = binary_metrics(y, p, 0.5)["auc"]
            p_true = np.clip(np.where(y == 1, p, 1 - p), 1e-7, 1.0)
            logs["val_loss"] = float(-np.log(p_true).mean())
            LOG.info(
                "epoch %d/%d: loss %.4f val_loss %.4f val_auc %.4f",
                epoch + 1,
                s["epochs"],
                logs.get("loss", float("nan")),
                logs.get("val_loss", float("nan")),
                logs["val_auc"],
            )

    prev = _previous_history(work / "log.csv")
    best = float(prev["val_auc"].max()) if len(prev) else None

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping whose state (best, wait) survives a resume from BackupAndRestore."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if best is not None:
                self.best = best
                since = len(prev) - 1 - int(prev["val_auc"].to_numpy().argmax())
                self.wait = since

    later_ties = _later_ties(s)

    class BestCheckpoint(keras.callbacks.Callback):
        """The model of the highest val_auc so far (strictly higher than the best before; for
        adversarial training also an equal one, see ``_later_ties``), written atomically: a
        kill mid-write (e.g. SLURM's time limit) leaves the previous best, never a truncated
        file that a resumed run could not load."""

        def __init__(self, path: Path, threshold):
            super().__init__()
            self.path, self.best = path, threshold

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_auc")
            if value is not None and (
                self.best is None or value > self.best or (later_ties and value == self.best)
            ):
                self.best = value
                with atomic_path(self.path) as tmp:
                    contract_model(self.model).save(tmp)  # standard layers only

    # Order matters: ValAUC fills logs["val_auc"] for the others; BackupAndRestore saves last,
    # so a kill between two callbacks at worst repeats one epoch, never skips its log row.
    return [
        ValAUC(),
        BestCheckpoint(work / "best.keras", best),
        ResumableEarlyStopping(monitor="val_auc", mode="max", patience=s["patience"]),
        keras.callbacks.CSVLogger(str(work / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(model_dir / "tensorboard"), write_graph=False),
        # Kept after fit (the whole work directory goes after a successful run): a finished
        # state is never mistaken for a fresh start that appends to the old log.
        # double_checkpoint: the state before the last save is kept as *.bkp, and Keras falls
        # back to it when the latest cannot be read (a kill in the middle of writing it).
        keras.callbacks.BackupAndRestore(
            str(work / "backup"),
            save_freq="epoch",
            delete_checkpoint=False,
            double_checkpoint=True,
        ),
    ]


def _later_ties(s: dict) -> bool:
    """Whether an epoch as good as the best (clean validation AUROC) replaces it: for
    adversarial training, whose later epochs are the more robust ones (ties are common when a
    fine-tuned model starts at its best clean AUROC); clean training keeps the earliest."""
    return bool(s.get("adversarial"))


def best_row(history: pd.DataFrame, s: dict) -> int:
    """The row of ``history`` whose checkpoint ``BestCheckpoint`` kept."""
    auc = history["val_auc"].to_numpy()
    if _later_ties(s):
        return int(len(auc) - 1 - auc[::-1].argmax())
    return int(auc.argmax())


def _previous_history(path: Path) -> pd.DataFrame:
    if path.is_file() and path.stat().st_size > 0:
        df = pd.read_csv(path)
        if "val_auc" in df:
            return df.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    return pd.DataFrame(columns=["epoch", "val_auc"])


# Files train_model publishes in out_dir; all are removed when a run starts, so a failed run
# never leaves an older run's outputs that look current.
OUTPUT_FILES = ("model.keras", "metrics.json", "history.csv", "train_patients.txt")
# Bump when the meaning of the work state changes: older work directories are then discarded.
WORK_STATE_VERSION = 2


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
    from cxrtransfer.data.datasets import label_summary

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
        "class_weight": {0: n / (2.0 * n0), 1: n / (2.0 * n1)} if balanced else None,
        "patient_ids": train["patient_ids"],
    }


def _multilabel_counts(settings: dict, train_shards, val_shards, patients) -> dict:
    """A multi-label model's training counts: images, per-label positives of train and val;
    validation needs at least one label with both classes (the checkpoint metric)."""
    from cxrtransfer.data.datasets import label_summary, shard_arrays

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


@contextlib.contextmanager
def deterministic_ops(seed: int):
    """Seed Python, NumPy, TensorFlow and Keras and make TensorFlow ops deterministic for the
    duration (restoring the previous op-determinism setting afterwards)."""
    import keras
    import tensorflow as tf

    try:  # is/disable are not in the public API; without them determinism stays on
        from tensorflow.python.framework import config as tf_config

        restore = not tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):
        tf_config, restore = None, False
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        if restore:
            tf_config.disable_op_determinism()


def _fit(
    settings: dict,
    train_shards,
    val_shards,
    patients,
    out: Path,
    counts: dict,
    init=None,
    make_trainer=None,
) -> float:
    """Train (or continue the interrupted run in ``out/work``); returns wall time in seconds.
    A run that already finished (``work/fit_done``) is not trained further. ``init``: the
    checkpoint to start from (``init_from``), or None."""
    from cxrtransfer.data.datasets import make_dataset
    from cxrtransfer.models.inference import make_predict_fn, predict_shards

    work = out / "work"
    done = work / "fit_done.json"
    if done.is_file():
        LOG.info("training of this state had finished; selecting and evaluating only")
        return float(json.loads(done.read_text())["wall_time_s"])
    size = settings["image_size"]
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
    multi = is_multilabel(settings)
    if multi:
        LOG.info(
            "multi-label model: %d sigmoid outputs %s, loss: %s",
            len(settings["labels"]),
            settings["labels"],
            MULTILABEL_LOSS,
        )
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
        model.fit(
            train_ds,
            epochs=settings["epochs"],
            class_weight=counts["class_weight"],
            callbacks=_callbacks(out, work, settings, val_preds),
            shuffle=False,
            verbose=0,  # one line per epoch from ValAUC instead of Keras' progress bars
        )
        wall = time.time() - t0
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps({"wall_time_s": wall}))
    return wall


def _select(settings: dict, work: Path, val_shards):
    """The best checkpoint (by val AUROC), its Youden threshold on val and its val metrics;
    refuses collapsed models. Reads validation data only."""
    import keras

    from cxrtransfer.models.inference import predict_shards

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


def _test_metrics(settings: dict, model, test_shards, threshold: float) -> dict:
    """Test metrics at the chosen threshold: reported only, after every decision was made."""
    from cxrtransfer.models.inference import predict_shards

    if is_multilabel(settings):
        test = predict_shards(model, test_shards, settings["image_size"], multilabel=True)
        return multilabel_metrics(test["labels"], test["probs"], settings["labels"])
    test = predict_shards(model, test_shards, settings["image_size"])
    test_metrics = binary_metrics(test["labels"], test["probs"], threshold)
    if test_metrics["predicted_positive_fraction"] in (0.0, 1.0):
        LOG.warning(
            "model %s predicts one class for every test image (reported, not a gate)",
            settings["name"],
        )
    return test_metrics


def weights_sha256(model) -> str:
    """sha256 of a model's weights (in order: dtype, shape, bytes): equal for equal weights,
    unlike the .keras file, whose metadata holds the save time (layer names are left out:
    Keras numbers auto-named layers per process)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_outputs(out: Path, model, metrics: dict, history: pd.DataFrame, patient_ids) -> dict:
    """history.csv, train_patients.txt, model.keras (weights only, no optimizer state) and
    metrics.json last, each atomically."""
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    with atomic_path(out / "train_patients.txt") as tmp:
        tmp.write_text("".join(f"{pid}\n" for pid in patient_ids))
    metrics["train_patients"] = {
        "file": "train_patients.txt",
        "n": len(patient_ids),
        "sha256": file_sha256(out / "train_patients.txt"),
    }
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)  # loaded with compile=False: no optimizer variables are saved
        metrics["checkpoint_sha256"] = file_sha256(tmp)
    metrics["weights_sha256"] = weights_sha256(model)
    metrics.update(runconfig.job_record())  # the config the job ran with and the planned one
    write_json(out / "metrics.json", metrics)
    return metrics


def read_init(settings: dict, init: dict) -> dict:
    """The model a fine-tuned model starts from (``init_from``): ``init`` holds the paths of its
    ``checkpoint`` (model.keras), ``metrics`` (metrics.json) and ``patients``
    (train_patients.txt). Returns what metrics.json records of it and its training patients;
    refuses a checkpoint that is not the one its metrics.json describes."""
    checkpoint = Path(init["checkpoint"])
    try:
        meta = json.loads(Path(init["metrics"]).read_text())
        patients = [int(x) for x in Path(init["patients"]).read_text().split()]
    except (OSError, ValueError) as e:
        raise WorkflowError(
            f"Model '{settings['name']}': cannot read the init_from model's metrics or patients "
            f"({e}); rerun the training of '{settings.get('init_from')}'."
        ) from None
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
) -> dict:
    """Train, select by validation AUROC, check quality on validation data, write model.keras,
    metrics.json, history.csv and train_patients.txt; then delete the work state.

    ``init``: for a model fine-tuned from another (``init_from``), the paths of that model's
    ``checkpoint``, ``metrics`` and ``patients`` (see ``read_init``). Its training patients
    count as this model's too (train_patients.txt holds the union), so measured patient
    overlap stays honest. ``make_trainer``: for adversarial training, the trainer that crafts
    each batch's examples (see ``compiled_model``)."""
    out = Path(out_dir)
    work = out / "work"
    if settings.get("adversarial"):  # settings built without a validated config: defaults
        settings = {**settings, "adversarial": {**ADVERSARIAL_DEFAULTS, **settings["adversarial"]}}
    counts = _training_counts(settings, train_shards, val_shards, patients)
    start = read_init(settings, init) if init is not None else None
    checkpoint = Path(init["checkpoint"]) if init is not None else None
    stamp = inputs_stamp(settings, train_shards, val_shards, counts["patient_ids"], checkpoint)
    prepare_work(out, stamp)
    wall = _fit(settings, train_shards, val_shards, patients, out, counts, checkpoint, make_trainer)
    history = _previous_history(work / "log.csv")
    best, threshold, val_metrics = _select(settings, work, val_shards)
    test_metrics = _test_metrics(settings, best, test_shards, threshold)
    row = best_row(history, settings)
    multi = is_multilabel(settings)
    metrics = {
        "model": settings["name"],
        "task": settings["task"],
        "arch": settings["arch"],
        **output_record(settings),
        # a multi-label model: per-label thresholds (its views M@T choose their own)
        "threshold": None if multi else threshold,
        **({"thresholds_per_label": threshold, "loss": MULTILABEL_LOSS} if multi else {}),
        "threshold_rule": "Youden J (max sensitivity + specificity - 1) on the validation split",
        "val": val_metrics,
        "test": test_metrics,
        "epochs_run": int(len(history)),
        "best_epoch": int(history["epoch"].iloc[row]) + 1,
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
    patient_ids = counts["patient_ids"]
    if settings.get("adversarial"):
        metrics["adversarial"] = settings["adversarial"]
    if start is not None:
        metrics["init_from"] = start["record"]
        patient_ids = sorted(set(patient_ids) | set(start["patients"]))
    metrics = _write_outputs(out, best, metrics, history, patient_ids)
    shutil.rmtree(work)
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


# The gate's bootstrap: resamples and level of the validation AUROC's patient-bootstrap CI.
GATE_N_BOOT = 2000
GATE_CONFIDENCE = 0.95
# A model is refused when the CI's lower bound is at or below chance.
GATE_CHANCE = 0.5


def gate_ci(val: dict, seed: int = 0) -> dict:
    """``auc_ci`` (the validation AUROC's patient-bootstrap CI of predictions ``val``: labels,
    probs, patient_id) and ``auc_ci_rule``, recorded in metrics.json beside the point AUROC."""
    from cxrtransfer.metrics.bootstrap import auroc_ci

    low, high = auroc_ci(
        val["labels"], val["probs"], val["patient_id"], GATE_N_BOOT, GATE_CONFIDENCE, seed
    )
    return {
        "auc_ci": [low, high],
        "auc_ci_rule": (
            f"{GATE_CONFIDENCE:.0%} percentile patient bootstrap ({GATE_N_BOOT} resamples, seed "
            f"{seed}); the gate refuses a lower bound <= {GATE_CHANCE}"
        ),
    }


def _gate_ci_message(settings: dict, val_metrics: dict, what: str) -> str | None:
    low, high = val_metrics.get("auc_ci", (float("nan"), float("nan")))
    if (np.isfinite(low) and low > GATE_CHANCE) or not settings["min_val_auc"] > 0:
        return None  # min_val_auc 0: the quality gate is off
    return (
        f"Model '{settings['name']}' is not shown to be better than chance on its validation "
        f"split: {what} {val_metrics['auc']:.3f} with {GATE_CONFIDENCE:.0%} patient-bootstrap CI "
        f"[{low:.3f}, {high:.3f}] (n = {val_metrics.get('n', '?')} images), whose lower bound is "
        f"not above {GATE_CHANCE}. On a small validation set a point AUROC above min_val_auc can "
        "be luck (a model with validation AUROC 0.612 on 59 images had test AUROC 0.415). Train "
        "longer or with other settings, use more validation patients (split fractions, "
        "data.synthetic sizes), or pretrained weights."
    )


def check_quality(settings: dict, val_metrics: dict, val_probs: np.ndarray) -> None:
    """Refuse models that learnt nothing (the seed study's clean AUC 0.50): a validation AUROC
    below ``min_val_auc``, a CI (``gate_ci``) whose lower bound is at or below chance, or one
    predicted class for everything. Validation data only: the test split is never an
    acceptance gate."""
    if not np.isfinite(val_metrics["auc"]) or val_metrics["auc"] < settings["min_val_auc"]:
        spread = float(np.std(val_probs))
        raise WorkflowError(
            f"Model '{settings['name']}' did not learn its task: validation AUC "
            f"{val_metrics['auc']:.3f} < min_val_auc {settings['min_val_auc']} (probability "
            f"spread {spread:.2g}; a model that predicts one class for everything has AUC 0.5). "
            "Train longer (epochs), lower the learning rate, add warmup_epochs, or use "
            "pretrained weights."
        )
    fraction = val_metrics["predicted_positive_fraction"]
    if fraction in (0.0, 1.0):
        raise WorkflowError(
            f"Model '{settings['name']}' predicts one class for every validation image at its "
            f"threshold (predicted positive fraction {fraction}). It has collapsed; see its "
            "history.csv and retrain with other settings."
        )
    message = _gate_ci_message(settings, val_metrics, "validation AUROC")
    if message:
        raise WorkflowError(message)


def check_multilabel_quality(settings: dict, val_metrics: dict, val_probs: np.ndarray) -> None:
    """The quality gate of a multi-label model (validation data only): the mean validation
    AUROC over the labels with both classes must reach ``min_val_auc`` (the message names the
    labels below it) and its patient-bootstrap CI's lower bound must be above chance, and the
    model must not have collapsed (every output constant)."""
    per = {k: v for k, v in val_metrics["auc_per_label"].items() if v is not None}
    below = sorted(k for k, v in per.items() if v < settings["min_val_auc"])
    mean = val_metrics["auc"]
    if not np.isfinite(mean) or mean < settings["min_val_auc"]:
        detail = ", ".join(f"{k} {per[k]:.3f}" for k in below)
        raise WorkflowError(
            f"Model '{settings['name']}' did not learn its task: mean validation AUC {mean:.3f} "
            f"over {len(per)} labels < min_val_auc {settings['min_val_auc']}; labels below it: "
            f"{detail or 'none'}. Train longer (epochs), lower the learning rate, add "
            "warmup_epochs, or use pretrained weights."
        )
    message = _gate_ci_message(settings, val_metrics, "mean validation AUROC")
    if message:
        raise WorkflowError(message)
    spread = np.std(val_probs, axis=0)
    if len(spread) and float(np.max(spread)) < 1e-6:
        raise WorkflowError(
            f"Model '{settings['name']}' predicts the same probabilities for every validation "
            "image on every output: it has collapsed; see its history.csv and retrain with "
            "other settings."
        )
    if below:
        LOG.warning(
            "model %s: labels below min_val_auc %s (the gate is on the mean): %s",
            settings["name"],
            settings["min_val_auc"],
            ", ".join(f"{k} {per[k]:.3f}" for k in below),
        )
