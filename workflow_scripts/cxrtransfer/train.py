"""Fine-tune one model from the HDF5 shards: checkpoint every epoch, resume, select by val AUC.

Outputs in ``out_dir``: ``model.keras`` (written last, only when training finished and the
model passed the quality checks), ``metrics.json``, ``history.csv``. Work state lives in
``out_dir/work`` (Keras BackupAndRestore state, best checkpoint, CSV log) and
``out_dir/tensorboard``; a killed job resumes from its last completed epoch.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import WorkflowError
from .utils import LOG, atomic_path, file_sha256, params_hash, write_json

TRAINING_DEFAULTS = {
    "epochs": 10,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "warmup_epochs": 1,
    "augmentation": True,
    "patience": 4,
    "class_weight": "balanced",
    "min_val_auc": 0.6,
    "bn_momentum": 0.9,
}


def model_settings(config: dict, name: str) -> dict:
    """Everything that defines model ``name``: its entry merged over the training defaults."""
    if name not in config["models"]:
        raise WorkflowError(f"Unknown model '{name}'; configured: {sorted(config['models'])}")
    m = dict(config["models"][name])
    training = {**TRAINING_DEFAULTS, **config.get("training", {}), **m.pop("training", {})}
    return {
        "name": name,
        "task": m["task"],
        "label": config["tasks"][m["task"]]["label"],
        "arch": m["arch"],
        "seed": int(m["seed"]),
        "pretrained": m.get("pretrained", "none"),
        "train_subset": m.get("train_subset", "all"),
        "image_size": int(config["data"]["image_size"]),
        "split_seed": int(config.get("split", {}).get("seed", 42)),
        "augment": dict(config.get("augmentation", {})) if training["augmentation"] else {},
        **training,
    }


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    pos, neg = labels == 1, labels == 0
    auc = float(roc_auc_score(labels, probs)) if pos.any() and neg.any() else float("nan")
    return {
        "auc": auc,
        "accuracy": float((pred == labels).mean()),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float(1 - pred[neg].mean()) if neg.any() else float("nan"),
        "n": int(len(labels)),
        "positives": int(pos.sum()),
        "predicted_positive_fraction": float(pred.mean()),
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


def compiled_model(s: dict, steps_per_epoch: int):
    """The model of settings ``s``, compiled as training uses it (also used by the benchmark)."""
    from .models import build_model

    model = build_model(
        s["arch"], s["image_size"], s["pretrained"], seed=s["seed"], bn_momentum=s["bn_momentum"]
    )
    model.compile(
        optimizer=_optimizer(s, steps_per_epoch),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _callbacks(model_dir: Path, work: Path, s: dict, val_ds_fn):
    import keras

    class ValAUC(keras.callbacks.Callback):
        """Validation AUROC (scikit-learn) into the epoch logs as ``val_auc``."""

        def on_epoch_end(self, epoch, logs=None):
            y, p = val_ds_fn(self.model, self)
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

    # Order matters: ValAUC fills logs["val_auc"] for the others; BackupAndRestore saves last,
    # so a kill between two callbacks at worst repeats one epoch, never skips its log row.
    return [
        ValAUC(),
        keras.callbacks.ModelCheckpoint(
            str(work / "best.keras"),
            monitor="val_auc",
            mode="max",
            save_best_only=True,
            initial_value_threshold=best,
        ),
        ResumableEarlyStopping(monitor="val_auc", mode="max", patience=s["patience"]),
        keras.callbacks.CSVLogger(str(work / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(model_dir / "tensorboard"), write_graph=False),
        keras.callbacks.BackupAndRestore(str(work / "backup"), save_freq="epoch"),
    ]


def _previous_history(path: Path) -> pd.DataFrame:
    if path.is_file() and path.stat().st_size > 0:
        df = pd.read_csv(path)
        if "val_auc" in df:
            return df.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    return pd.DataFrame(columns=["epoch", "val_auc"])


def train_model(
    s: dict,
    train_shards: list,
    val_shards: list,
    test_shards: list,
    out_dir: str | Path,
    patients: set[int] | None = None,
) -> dict:
    """Train, select by validation AUROC, check quality, write model.keras + metrics."""
    import keras

    from .data import count_labels, make_dataset
    from .inference import make_predict_fn, predict_shards

    out = Path(out_dir)
    work = out / "work"
    stamp = params_hash(
        {k: v for k, v in s.items()} | {"train_shards": [str(p) for p in train_shards]}
    )
    settings_file = work / "settings.json"
    if work.exists():
        old = json.loads(settings_file.read_text()).get("hash") if settings_file.is_file() else None
        if old != stamp:
            LOG.info("settings changed since the interrupted run: starting over")
            shutil.rmtree(work)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps({"hash": stamp, "settings": s}, indent=2, default=str))

    size = s["image_size"]
    n0, n1 = count_labels(train_shards, size, patients)
    if n0 == 0 or n1 == 0:
        raise WorkflowError(
            f"Model '{s['name']}': the training data has {n1} positives and {n0} negatives "
            f"({', '.join(map(str, train_shards[:2]))}...); a binary classifier needs both."
        )
    vn0, vn1 = count_labels(val_shards, size)
    if vn0 == 0 or vn1 == 0:
        raise WorkflowError(
            f"Model '{s['name']}': the validation split has {vn1} positives and {vn0} "
            "negatives; validation AUROC is undefined. Use more data or a larger val_fraction."
        )
    n = n0 + n1
    class_weight = (
        {0: n / (2.0 * n0), 1: n / (2.0 * n1)} if s["class_weight"] == "balanced" else None
    )
    steps = int(np.ceil(n / s["batch_size"]))
    LOG.info(
        "model %s: %s (%s) on %d train images (%d positive), %d val; class weights %s",
        s["name"],
        s["arch"],
        s["pretrained"],
        n,
        n1,
        vn0 + vn1,
        class_weight,
    )
    keras.utils.set_random_seed(s["seed"])
    model = compiled_model(s, steps)
    train_ds = make_dataset(
        train_shards,
        size,
        s["batch_size"],
        shuffle=True,
        seed=s["seed"],
        patients=patients,
        augment=s["augment"] or None,
        n_images=n,
    )

    def val_preds(m, holder):
        if not hasattr(holder, "predict_fn"):  # trace the compiled prediction once
            holder.predict_fn = make_predict_fn(m)
        r = predict_shards(m, val_shards, size, predict_fn=holder.predict_fn)
        return r["labels"], r["probs"]

    t0 = time.time()
    model.fit(
        train_ds,
        epochs=s["epochs"],
        class_weight=class_weight,
        callbacks=_callbacks(out, work, s, val_preds),
        shuffle=False,
        verbose=0,  # one line per epoch from ValAUC instead of Keras' progress bars
    )
    wall = time.time() - t0
    history = _previous_history(work / "log.csv")
    if not (work / "best.keras").is_file():
        raise WorkflowError(f"Model '{s['name']}': no checkpoint was saved (no epoch finished).")
    best = keras.models.load_model(work / "best.keras", compile=False, safe_mode=True)
    val = predict_shards(best, val_shards, size)
    test = predict_shards(best, test_shards, size)
    threshold = youden_threshold(val["labels"], val["probs"])
    val_m = binary_metrics(val["labels"], val["probs"], threshold)
    test_m = binary_metrics(test["labels"], test["probs"], threshold)
    check_quality(s, val_m, test_m, val["probs"])
    metrics = {
        "model": s["name"],
        "task": s["task"],
        "arch": s["arch"],
        "threshold": threshold,
        "threshold_rule": "Youden J (max sensitivity + specificity - 1) on the validation split",
        "val": val_m,
        "test": test_m,
        "epochs_run": int(len(history)),
        "best_epoch": int(history["epoch"].iloc[int(history["val_auc"].to_numpy().argmax())]) + 1,
        "wall_time_s": round(wall, 1),
        "train_images": n,
        "train_positives": n1,
        "settings": s,
    }
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    with atomic_path(out / "model.keras") as tmp:
        shutil.copyfile(work / "best.keras", tmp)
    metrics["checkpoint_sha256"] = file_sha256(out / "model.keras")
    write_json(out / "metrics.json", metrics)
    LOG.info(
        "model %s: val AUC %.3f, test AUC %.3f (threshold %.3f), %d epochs, %.0f s",
        s["name"],
        val_m["auc"],
        test_m["auc"],
        threshold,
        len(history),
        wall,
    )
    return metrics


def check_quality(s: dict, val_m: dict, test_m: dict, val_probs: np.ndarray) -> None:
    """Refuse models that learnt nothing (the seed study's clean AUC 0.50)."""
    if not np.isfinite(val_m["auc"]) or val_m["auc"] < s["min_val_auc"]:
        spread = float(np.std(val_probs))
        raise WorkflowError(
            f"Model '{s['name']}' did not learn its task: validation AUC {val_m['auc']:.3f} < "
            f"min_val_auc {s['min_val_auc']} (probability spread {spread:.2g}; a model that "
            "predicts one class for everything has AUC 0.5). Train longer (epochs), lower the "
            "learning rate, add warmup_epochs, or use pretrained weights."
        )
    for name, m in (("validation", val_m), ("test", test_m)):
        if m["predicted_positive_fraction"] in (0.0, 1.0):
            raise WorkflowError(
                f"Model '{s['name']}' predicts one class for every {name} image at its "
                f"threshold (predicted positive fraction {m['predicted_positive_fraction']}). "
                "It has collapsed; see its history.csv and retrain with other settings."
            )


def json_threshold(metrics_path) -> float:
    """The decision threshold a model chose on its validation split (from metrics.json)."""
    try:
        return float(json.loads(Path(metrics_path).read_text())["threshold"])
    except (OSError, KeyError, ValueError) as e:
        raise WorkflowError(
            f"Cannot read the decision threshold from '{metrics_path}' ({e}); rerun training."
        ) from None
