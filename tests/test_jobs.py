"""Attack and prediction jobs on real files: the cache format, its eps bound, bad input."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.jobs import attack_shard, predict_adv_shard, predict_clean_shard, read_attack
from cxrtransfer.utils import file_sha256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small real Keras model honouring the model contract, trained a little, and a shard."""
    import keras

    d = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    n, size = 48, 24
    labels = (np.arange(n) % 2).astype(np.int8)
    images = rng.integers(60, 120, (n, size, size)).astype(np.uint8)
    images[labels == 1, 6:18, 6:18] += 25  # a bright square = the finding
    with h5py.File(d / "000.h5", "w") as f:
        f["images"] = images
        f["labels"] = labels
        f["image_index"] = np.array([f"{i:08d}_000.png" for i in range(n)], dtype="S")
        f["patient_id"] = np.arange(n, dtype=np.int32)
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(images[..., None] / 255.0, labels, epochs=80, batch_size=16, verbose=0)
    acc = ((model.predict(images[..., None] / 255.0, verbose=0)[:, 1] >= 0.5) == labels).mean()
    assert acc > 0.9, f"fixture model did not learn ({acc})"
    model.save(d / "model.keras")
    (d / "metrics.json").write_text(json.dumps({"threshold": 0.5}))
    return d, images, labels


def _attack(d, out, eps=4, cfg=None, size=24):
    cfg = cfg or {"method": "pgd", "step_fraction": 0.25, "steps": 5}
    return attack_shard(
        d / "model.keras",
        d / "metrics.json",
        d / "000.h5",
        out,
        "pgd",
        cfg,
        eps,
        size,
        16,
        "tiny",
        "task",
    )


def test_attack_cache_format_and_bound(tiny, tmp_path):
    d, images, labels = tiny
    out = tmp_path / "eps16" / "000.h5"
    r = _attack(d, out, eps=16, cfg={"method": "pgd", "step_fraction": 0.25, "steps": 8})
    assert r["n"] == len(images)
    with h5py.File(out) as f:
        adv = f["images"][...]
        a = dict(f.attrs)
        assert adv.dtype == np.uint8 and adv.shape == images.shape
        assert (
            f["image_index"][...].astype(str)[:2] == ["00000000_000.png", "00000001_000.png"]
        ).all()
        assert f["source_clean_prob"].shape == (len(images),)
    assert np.abs(adv.astype(int) - images.astype(int)).max() <= 16
    assert a["eps"] == 16.0 and a["step"] == 4.0 and a["steps"] == 8 and a["norm"] == "linf"
    assert a["targeted"] == False and a["restarts"] == 1  # noqa: E712
    assert a["source_checkpoint_sha256"] == file_sha256(d / "model.keras")
    assert a["n_quantisation_unfooled"] >= 0 and a["max_linf_255"] <= 16
    # predictions of a target on the stored images: what the metrics read
    csv = tmp_path / "pred.csv"
    predict_adv_shard(d / "model.keras", out, csv, 24, 32)
    df = pd.read_csv(csv)
    assert list(df.columns) == [
        "image_index",
        "label",
        "prob",
        "source_clean_prob",
        "source_adv_prob",
        "l2",
        "linf",
    ]
    # white-box: the target's prediction on the cache equals the source's recorded one
    assert np.allclose(df["prob"], df["source_adv_prob"], atol=1e-5)
    clean = tmp_path / "clean.csv"
    predict_clean_shard(d / "model.keras", d / "000.h5", clean, 24, 32)
    c = pd.read_csv(clean)
    assert np.allclose(c["prob"], df["source_clean_prob"], atol=1e-5)
    assert (df["prob"].round() != df["label"]).mean() > (c["prob"].round() != c["label"]).mean()


def test_stale_cache_is_detected(tiny, tmp_path):
    d, _, _ = tiny
    out = tmp_path / "000.h5"
    _attack(d, out)
    with pytest.raises(WorkflowError, match="stale"):
        read_attack(out, expected_sha256="0" * 64)


def test_bad_attack_input_fails_before_work(tiny, tmp_path):
    d, _, _ = tiny
    out = tmp_path / "000.h5"
    with pytest.raises(WorkflowError, match="eps"):
        _attack(d, out, eps=0)
    with pytest.raises(WorkflowError, match="larger than eps"):
        _attack(d, out, eps=2, cfg={"method": "pgd", "step": 4, "steps": 5})
    with pytest.raises(WorkflowError, match="method"):
        _attack(d, out, cfg={"method": "cw"})
    with pytest.raises(WorkflowError, match="expects 24x24 images but data.image_size is 32"):
        _attack(d, out, size=32)
    assert not out.exists()
