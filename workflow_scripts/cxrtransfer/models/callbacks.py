"""The callbacks of a training run (validation AUROC each epoch, and for adversarially trained
models the robust validation AUROC; the best checkpoint, early stopping and Keras' backup that
survive a resume, the CSV log, TensorBoard) and the readers of their log: which key chooses the
kept epoch (``monitored_key``) and which epoch's checkpoint was kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer.core.files import atomic_path
from cxrtransfer.core.logs import LOG
from cxrtransfer.models.outputs import binary_metrics, multilabel_metrics
from cxrtransfer.models.settings import is_multilabel
from cxrtransfer.models.trainable import contract_model

CLEAN_KEY = "val_auc"
ROBUST_KEY = "val_robust_auc"


def monitored_key(s: dict) -> str:
    """The epoch-log key that chooses the kept checkpoint and drives early stopping: the robust
    validation AUROC (``val_robust_auc``) for an adversarially trained model, the validation
    AUROC (``val_auc``) otherwise."""
    return ROBUST_KEY if s.get("adversarial") else CLEAN_KEY


def _val_auc(keras, s: dict, val_ds_fn, robust_fn=None):
    """The callback that writes the validation AUROC (and, with ``robust_fn``, the robust one)
    into the epoch logs."""

    class ValAUC(keras.callbacks.Callback):
        """Validation AUROC (scikit-learn) into the epoch logs as ``val_auc``; with
        ``robust_fn(model, holder)`` (the AUROC on the attacked validation images) also
        ``val_robust_auc``."""

        def on_epoch_end(self, epoch, logs=None):
            model = contract_model(self.model)
            y, p = val_ds_fn(model, self)
            if is_multilabel(s):  # mean AUROC over the labels with both classes in val
                logs[CLEAN_KEY] = multilabel_metrics(y, p, s["labels"])["auc"]
            else:
                logs[CLEAN_KEY] = binary_metrics(y, p, 0.5)["auc"]
            p_true = np.clip(np.where(y == 1, p, 1 - p), 1e-7, 1.0)
            logs["val_loss"] = float(-np.log(p_true).mean())
            robust = ""
            if robust_fn is not None:
                logs[ROBUST_KEY] = float(robust_fn(model, self))
                robust = f" {ROBUST_KEY} {logs[ROBUST_KEY]:.4f}"
            LOG.info(
                "epoch %d/%d: loss %.4f val_loss %.4f val_auc %.4f%s",
                epoch + 1,
                s["epochs"],
                logs.get("loss", float("nan")),
                logs.get("val_loss", float("nan")),
                logs[CLEAN_KEY],
                robust,
            )

    return ValAUC()


def _early_stopping(keras, prev: pd.DataFrame, best, patience: int, key: str):
    """Early stopping on ``key`` that resumes from the log ``prev`` of the epochs so far."""

    # Keras' own EarlyStopping, with its state restored: its on_train_begin resets best and
    # wait, and BackupAndRestore restores the model, the optimizer and the epoch only (its
    # `baseline` sets no best and no wait), so a resumed run would otherwise wait `patience`
    # epochs afresh.
    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping whose state (best, wait) survives a resume from BackupAndRestore."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if best is not None:
                self.best = best
                since = len(prev) - 1 - int(prev[key].to_numpy().argmax())
                self.wait = since

    return ResumableEarlyStopping(monitor=key, mode="max", patience=patience)


def _best_checkpoint(keras, path: Path, best, keep_later: bool, key: str):
    """The callback that keeps the best model so far in ``path``."""

    # Not keras.callbacks.ModelCheckpoint(save_best_only=True): its initial_value_threshold
    # would carry the resumed best, but (Keras 3.15) it saves the model fit() trains, which for
    # adversarial training is the trainer around the model, not contract_model(); it writes the
    # file in place (saving_lib opens the path itself), so a kill mid-save leaves a truncated
    # best.keras that the resumed run cannot load; and it compares strictly (current -
    # min_delta > best, min_delta >= 0), so it cannot keep the later of equal epochs
    # (later_ties). Overriding its private _save_model / _should_save_model would leave
    # nothing of it.
    class BestCheckpoint(keras.callbacks.Callback):
        """The model of the highest ``key`` so far (``monitored_key``; strictly higher than
        the best before, for adversarial training also an equal one, see ``later_ties``),
        written atomically: a
        kill mid-write (e.g. SLURM's time limit) leaves the previous best, never a truncated
        file that a resumed run could not load."""

        def __init__(self, path: Path, threshold):
            super().__init__()
            self.path, self.best = path, threshold

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(key)
            if value is not None and (
                self.best is None or value > self.best or (keep_later and value == self.best)
            ):
                self.best = value
                with atomic_path(self.path) as tmp:
                    contract_model(self.model).save(tmp)  # standard layers only

    return BestCheckpoint(path, best)


def training_callbacks(model_dir: Path, work: Path, s: dict, val_ds_fn, robust_fn=None):
    """The callbacks of a run of settings ``s`` in ``model_dir`` (state in ``work``), in the
    order they must run; ``val_ds_fn(model, holder)`` gives the validation labels and probs,
    ``robust_fn(model, holder)`` (adversarially trained models) the robust validation AUROC."""
    # heavy: Keras loads in training jobs only
    import keras

    key = monitored_key(s)
    if key == ROBUST_KEY and robust_fn is None:
        raise ValueError("an adversarially trained model's callbacks need robust_fn")
    prev = previous_history(work / "log.csv", key)
    best = float(prev[key].max()) if len(prev) else None
    # Order matters: ValAUC fills the logs' AUROCs for the others; BackupAndRestore saves last,
    # so a kill between two callbacks at worst repeats one epoch, never skips its log row.
    return [
        _val_auc(keras, s, val_ds_fn, robust_fn if key == ROBUST_KEY else None),
        _best_checkpoint(keras, work / "best.keras", best, later_ties(s), key),
        _early_stopping(keras, prev, best, s["patience"], key),
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


def later_ties(s: dict) -> bool:
    """Whether an epoch as good as the best (of ``monitored_key``) replaces it: for adversarial
    training, whose later epochs are the more robust ones (the robust AUROC of a few attacked
    validation images ties easily); clean training keeps the earliest."""
    return bool(s.get("adversarial"))


def best_row(history: pd.DataFrame, s: dict) -> int:
    """The row of ``history`` whose checkpoint ``BestCheckpoint`` kept: the highest
    ``monitored_key``, of equal ones the later for adversarial training, else the earlier."""
    auc = history[monitored_key(s)].to_numpy()
    if later_ties(s):
        return int(len(auc) - 1 - auc[::-1].argmax())
    return int(auc.argmax())


def previous_history(path: Path, key: str = CLEAN_KEY) -> pd.DataFrame:
    """The epochs of the CSV log ``path`` so far (the last row of a repeated epoch); empty when
    it has no column ``key`` (the monitored key, ``monitored_key``)."""
    if path.is_file() and path.stat().st_size > 0:
        df = pd.read_csv(path)
        if key in df:
            return df.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    return pd.DataFrame(columns=["epoch", key])
