"""Training: metrics agree with a recomputation, resume after a kill, collapse detection."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.train import TRAINING_DEFAULTS, check_quality


def _settings(**kw):
    s = {
        **TRAINING_DEFAULTS,
        "name": "tiny",
        "task": "pneumothorax",
        "label": "Pneumothorax",
        "arch": "MobileNetV3Small",
        "seed": 1,
        "pretrained": "none",
        "train_subset": "all",
        "image_size": 64,
        "split_seed": 1,
        "augment": {"rotation": 0.02, "zoom": 0.05, "shift": 0.05},
        "epochs": 8,
        "learning_rate": 0.002,
        "warmup_epochs": 0,
        "min_val_auc": 0.0,
        "patience": 10,
    }
    s.update(kw)
    return s


@pytest.fixture(scope="module")
def trained(pneumothorax_shards, tmp_path_factory):
    from cxrtransfer.train import train_model

    out = tmp_path_factory.mktemp("model")
    s = pneumothorax_shards
    metrics = train_model(_settings(), s["train"], s["val"], s["test"], out)
    return out, metrics


def test_outputs_and_metrics_agree_with_recomputation(trained, pneumothorax_shards):
    import keras
    from cxrtransfer.data import load_split
    from sklearn.metrics import roc_auc_score

    out, metrics = trained
    assert (out / "model.keras").is_file() and (out / "history.csv").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for k in ("auc", "accuracy", "sensitivity", "specificity"):
            assert k in saved[split]
    assert 0 <= saved["threshold"] <= 1 and saved["epochs_run"] >= 1 and saved["wall_time_s"] > 0
    assert len(pd.read_csv(out / "history.csv")) == saved["epochs_run"]
    model = keras.models.load_model(out / "model.keras", safe_mode=True, compile=False)
    test = load_split(pneumothorax_shards["test"], 64)
    p = model.predict(test["images"][..., None].astype("float32") / 255.0, verbose=0)[:, 1]
    assert saved["test"]["auc"] == pytest.approx(roc_auc_score(test["labels"], p), abs=1e-6)
    pred = p >= saved["threshold"]
    assert saved["test"]["accuracy"] == pytest.approx((pred == test["labels"]).mean(), abs=1e-9)
    assert saved["test"]["auc"] > 0.7  # the tiny model learnt the (obvious) synthetic signal
    assert (out / "tensorboard").is_dir()


RESUME_SCRIPT = """
import json, sys
sys.path.insert(0, {src!r})
from cxrtransfer.utils import setup_logging
from cxrtransfer.train import train_model
setup_logging()
s = json.loads({settings!r})
sh = json.loads({shards!r})
train_model(s, sh["train"], sh["val"], sh["test"], {out!r})
"""


def _run(root, tmp_path, settings, shards, out):
    code = RESUME_SCRIPT.format(
        src=str(root / "workflow_scripts"),
        settings=json.dumps(settings),
        shards=json.dumps({k: [str(p) for p in v] for k, v in shards.items()}),
        out=str(out),
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_killed_training_resumes_from_last_epoch(root, tmp_path, pneumothorax_shards):
    out = tmp_path / "m"
    s = _settings(epochs=4)
    proc = _run(root, tmp_path, s, pneumothorax_shards, out)
    meta = out / "work" / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if meta.is_file():
            try:
                done = json.loads(meta.read_text())["epoch"]
            except (ValueError, KeyError):
                done = 0
            if done >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, (
        "training finished before it could be killed:\n" + proc.stdout.read()
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(meta.read_text())["epoch"]
    assert 2 <= done < 4
    assert not (out / "model.keras").exists()  # nothing that looks complete
    proc = _run(root, tmp_path, s, pneumothorax_shards, out)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    epochs = [
        int(line.split("epoch ")[1].split("/")[0])
        for line in log.splitlines()
        if " INFO epoch " in line
    ]
    assert epochs and epochs[0] == done + 1, log  # continued, did not start over
    assert epochs[-1] == 4
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [0, 1, 2, 3]
    assert (out / "model.keras").is_file()


def test_changed_settings_do_not_resume_stale_state(root, tmp_path, pneumothorax_shards):
    from cxrtransfer.train import train_model

    out = tmp_path / "m"
    (out / "work").mkdir(parents=True)
    (out / "work" / "settings.json").write_text(json.dumps({"hash": "something-else"}))
    (out / "work" / "log.csv").write_text("epoch,val_auc\n0,0.99\n1,0.99\n")
    s = pneumothorax_shards
    try:  # one epoch may or may not pass the quality checks; the log is what matters here
        train_model(_settings(epochs=1), s["train"], s["val"], s["test"], out)
    except WorkflowError:
        pass
    log = pd.read_csv(out / "work" / "log.csv")
    assert list(log["epoch"]) == [0]  # the stale two-epoch log was discarded, not resumed
    assert json.loads((out / "work" / "settings.json").read_text())["hash"] != "something-else"


def test_collapsed_model_fails_clearly():
    s = _settings(min_val_auc=0.6)
    good = {"auc": 0.9, "predicted_positive_fraction": 0.3}
    with pytest.raises(WorkflowError, match="did not learn"):
        check_quality(s, {"auc": 0.5, "predicted_positive_fraction": 0.0}, good, np.full(10, 0.3))
    with pytest.raises(WorkflowError, match="predicts one class"):
        check_quality(s, {"auc": 0.8, "predicted_positive_fraction": 1.0}, good, np.zeros(3))
    check_quality(s, good, good, np.linspace(0, 1, 10))  # a healthy model passes


def test_zero_positives_fail_clearly(pneumothorax_shards, tmp_path):
    from cxrtransfer.train import train_model

    s = pneumothorax_shards
    with pytest.raises(WorkflowError, match="0 positives|positives and"):
        train_model(_settings(), s["train"], s["val"], s["test"], tmp_path, patients={-1})
