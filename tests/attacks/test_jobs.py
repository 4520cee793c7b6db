"""Attack (with noise control) and prediction jobs on real files: formats, bounds, provenance
checks."""

import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.attacks.job import attack_set, attack_shard, control_shard
from cxrtransfer.core.files import file_sha256
from cxrtransfer.core.provenance import model_record
from cxrtransfer.data.adversarial_cache import read_attack, shuffle_perturbations
from cxrtransfer.evaluate.checklist_io import RUN_COLUMNS, read_runs
from cxrtransfer.evaluate.checklist_runs import run_checklist
from cxrtransfer.evaluate.predict import predict_adv, predict_clean
from cxrtransfer.evaluate.predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions
from cxrtransfer.metrics.measures import auroc

SIZE = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small real Keras model honouring the model contract, trained a little, and a shard."""
    import keras

    d = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    n = 48
    labels = (np.arange(n) % 2).astype(np.int8)
    images = rng.integers(60, 120, (n, SIZE, SIZE)).astype(np.uint8)
    images[labels == 1, 6:18, 6:18] += 25  # a bright square = the finding
    with h5py.File(d / "000.h5", "w") as f:
        f["images"] = images
        f["labels"] = labels
        f["image_index"] = np.array([f"{i:08d}_000.png" for i in range(n)], dtype="S")
        f["patient_id"] = (np.arange(n) // 3).astype(np.int32)
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(images[..., None] / 255.0, labels, epochs=80, batch_size=16, verbose=0)
    acc = ((model.predict(images[..., None] / 255.0, verbose=0)[:, 1] >= 0.5) == labels).mean()
    assert acc > 0.9, f"fixture model did not learn ({acc})"
    model.save(d / "model.keras")
    sha = file_sha256(d / "model.keras")
    (d / "metrics.json").write_text(json.dumps({"threshold": 0.5, "checkpoint_sha256": sha}))
    return d, images, labels


def _attack(d, out, eps=4, cfg=None, size=SIZE, control=None, shard="000.h5"):
    cfg = cfg or {"method": "pgd", "step_fraction": 0.25, "steps": 5}
    return attack_shard(
        model_path=d / "model.keras",
        metrics_path=d / "metrics.json",
        shard_path=d / shard,
        out_path=out,
        control_path=control,
        attack_name="pgd",
        attack_cfg=cfg,
        eps=eps,
        image_size=size,
        batch_size=16,
        source_model="tiny",
        data_task="task",
    )


@pytest.fixture(scope="module")
def cache(tiny, tmp_path_factory):
    d, _, _ = tiny
    out = tmp_path_factory.mktemp("cache") / "eps16" / "000.h5"
    _attack(d, out, eps=16, cfg={"method": "pgd", "step_fraction": 0.25, "steps": 8})
    return out


def _predict(d, tmp_path, cache):
    common = dict(model_path=d / "model.keras", metrics_path=d / "metrics.json", image_size=SIZE)
    adv_csv, clean_csv = tmp_path / "adv.csv", tmp_path / "clean.csv"
    predict_adv(sets=[([cache], adv_csv)], batch_size=32, **common)
    predict_clean(shard_paths=[d / "000.h5"], out_csv=clean_csv, batch_size=32, **common)
    return clean_csv, adv_csv


def test_attack_cache_format_and_bound(tiny, cache, tmp_path):
    d, images, labels = tiny
    with h5py.File(cache) as f:
        adv = f["images"][...]
        a = dict(f.attrs)
        assert adv.dtype == np.uint8 and adv.shape == images.shape
        assert (
            f["image_index"][...].astype(str)[:2] == ["00000000_000.png", "00000001_000.png"]
        ).all()
        assert (f["patient_id"][...] == np.arange(len(images)) // 3).all()
        assert f["source_clean_prob"].shape == (len(images),)
    assert np.abs(adv.astype(int) - images.astype(int)).max() <= 16
    assert a["eps"] == 16.0 and a["step"] == 4.0 and a["steps"] == 8 and a["norm"] == "linf"
    assert a["targeted"] == False and a["restarts"] == 1  # noqa: E712
    assert a["source_checkpoint_sha256"] == file_sha256(d / "model.keras")
    assert a["max_linf_255"] <= 16
    clean_csv, adv_csv = _predict(d, tmp_path, cache)
    df = pd.read_csv(adv_csv, dtype={"checkpoint_sha256": str})
    assert list(df.columns) == list(ADV_COLUMNS)
    assert (df["checkpoint_sha256"] == a["source_checkpoint_sha256"]).all()
    # white-box: the target's prediction on the cache equals the source's recorded one
    assert np.allclose(df["prob"], df["source_adv_prob"], atol=1e-5)
    c = pd.read_csv(clean_csv)
    assert list(c.columns) == list(CLEAN_COLUMNS)
    assert np.allclose(c["prob"], df["source_clean_prob"], atol=1e-5)
    assert (df["prob"].round() != df["label"]).mean() > (c["prob"].round() != c["label"]).mean()


def test_prediction_files_are_checked_against_shard_and_checkpoint(tiny, cache, tmp_path):
    """A prediction file cut by 6 bytes, one missing a row, or one made by another checkpoint
    is refused with its name; the intact file is accepted."""
    d, _, _ = tiny
    sha = file_sha256(d / "model.keras")
    clean_csv, _ = _predict(d, tmp_path, cache)
    shard = [d / "000.h5"]
    ok = read_predictions(clean_csv, CLEAN_COLUMNS, shard, checkpoint_sha256=sha)
    assert len(ok) == 48
    raw = clean_csv.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(raw[:-6])
    with pytest.raises(WorkflowError, match="cut.csv.*truncated"):
        read_predictions(cut, CLEAN_COLUMNS, shard, checkpoint_sha256=sha)
    short = tmp_path / "short.csv"
    short.write_text("".join(raw.decode().splitlines(keepends=True)[:-1]))
    with pytest.raises(WorkflowError, match="short.csv.*47 rows.*48 images"):
        read_predictions(short, CLEAN_COLUMNS, shard, checkpoint_sha256=sha)
    with pytest.raises(WorkflowError, match="clean.csv.*another checkpoint"):
        read_predictions(clean_csv, CLEAN_COLUMNS, shard, checkpoint_sha256="0" * 64)


def test_one_prediction_job_covers_a_whole_set_and_its_control(tiny, tmp_path):
    """predict_clean / predict_adv take all shards of a set (and its noise control) in one
    process: one file per set with the rows of every shard in shard order, equal to what each
    shard gives alone; the reader checks the file against the concatenated shards."""
    d, images, labels = tiny
    second = tmp_path / "001.h5"
    with h5py.File(d / "000.h5") as f, h5py.File(second, "w") as g:
        for name in ("images", "labels", "image_index", "patient_id"):
            g[name] = f[name][:20]
        g["image_index"][...] = np.array([f"{i:08d}_001.png" for i in range(20)], dtype="S")
    shards = [d / "000.h5", second]
    caches, controls = [], []
    for shard in shards:
        cache = tmp_path / "adv" / shard.name
        control = tmp_path / "ctrl" / shard.name
        cfg = {"method": "pgd", "step_fraction": 0.1, "steps": 2, "random_start": True}
        _attack(d, cache, eps=8, cfg=cfg, control=control, shard=shard)
        caches.append(cache)
        controls.append(control)
    common = dict(model_path=d / "model.keras", metrics_path=d / "metrics.json", image_size=SIZE)
    clean_csv, adv_csv, ctrl_csv = (tmp_path / f"{n}.csv" for n in ("clean", "adv", "ctrl"))
    predict_clean(shard_paths=shards, out_csv=clean_csv, batch_size=16, **common)
    predict_adv(sets=[(caches, adv_csv), (controls, ctrl_csv)], batch_size=16, **common)
    sha = file_sha256(d / "model.keras")
    clean = read_predictions(clean_csv, CLEAN_COLUMNS, shards, checkpoint_sha256=sha)
    assert len(clean) == len(images) + 20
    assert clean["image_index"].iloc[len(images)] == "00000000_001.png"
    for csv, parts in ((adv_csv, caches), (ctrl_csv, controls)):
        df = read_predictions(csv, ADV_COLUMNS, shards, checkpoint_sha256=sha)
        alone = []
        for i, part in enumerate(parts):
            one = tmp_path / f"one{i}.csv"
            predict_adv(sets=[([part], one)], batch_size=16, **common)
            alone.append(pd.read_csv(one, dtype={"image_index": str}))
        assert np.array_equal(pd.concat(alone)["prob"].to_numpy(), df["prob"].to_numpy())
        # each file carries its own caches' source probabilities (the set's, the control's)
        recorded = np.concatenate([read_attack(p)["source_adv_prob"] for p in parts])
        assert np.allclose(df["source_adv_prob"], recorded, atol=1e-6)
    assert not np.array_equal(read_attack(caches[0])["images"], read_attack(controls[0])["images"])
    # the reader refuses a file checked against the wrong shard order
    with pytest.raises(WorkflowError, match="clean.csv.*other images"):
        read_predictions(clean_csv, CLEAN_COLUMNS, shards[::-1], checkpoint_sha256=sha)


def test_attack_job_writes_the_same_control_as_the_control_function(tiny, tmp_path):
    """The attack job's control (written with the model it has loaded) is byte-for-byte the
    control that control_shard makes from the finished cache."""
    d, _, _ = tiny
    cfg = {"method": "pgd", "step_fraction": 0.1, "steps": 2, "random_start": True}
    cache, control = tmp_path / "a" / "000.h5", tmp_path / "c" / "000.h5"
    _attack(d, cache, eps=16, cfg=cfg, control=control)
    alone = tmp_path / "alone.h5"
    control_shard(
        attack_path=cache,
        model_path=d / "model.keras",
        metrics_path=d / "metrics.json",
        out_path=alone,
        image_size=SIZE,
        batch_size=16,
    )
    a, b = read_attack(control), read_attack(alone)
    for name in ("images", "source_adv_prob", "l2", "linf", "image_index"):
        assert np.array_equal(a[name], b[name]), name
    assert a["attrs"]["control"] == "shuffled" and a["attrs"]["control_of"] == str(cache)


def _two_shards(d, tmp_path):
    second = tmp_path / "001.h5"
    with h5py.File(d / "000.h5") as f, h5py.File(second, "w") as g:
        for name in ("images", "labels", "patient_id"):
            g[name] = f[name][:16]
        g["image_index"] = np.array([f"{i:08d}_001.png" for i in range(16)], dtype="S")
    return [d / "000.h5", second]


class Killed(Exception):
    pass


def _attack_set(d, shards, out, stamp, after_shard=None):
    cfg = {"method": "pgd", "step_fraction": 0.1, "steps": 2, "random_start": True}
    return attack_set(
        model_path=d / "model.keras",
        metrics_path=d / "metrics.json",
        shard_paths=shards,
        out_dir=out / "set",
        control_dir=out / "control",
        work_dir=out / "work",
        stamp=stamp,
        attack_name="pgd",
        attack_cfg=cfg,
        eps=8,
        image_size=SIZE,
        batch_size=16,
        source_model="tiny",
        data_task="task",
        after_shard=after_shard,
    )


def test_killed_attack_job_redoes_only_unfinished_shards(tiny, tmp_path, caplog):
    """One attack job covers a set's shards; killed after the first, its rerun reuses that
    shard (same stamp) and redoes the second; the result equals an uninterrupted run. A rerun
    with other settings (stamp) reuses nothing."""
    caplog.set_level(logging.INFO, logger="cxrtransfer")
    d, _, _ = tiny
    shards = _two_shards(d, tmp_path)
    stamp = {"eps": 8, "code": "v1"}

    def kill(i):
        raise Killed

    with pytest.raises(Killed):
        _attack_set(d, shards, tmp_path / "a", stamp, after_shard=kill)
    assert not (tmp_path / "a" / "set").exists()  # nothing published, the shard is kept
    kept = tmp_path / "a" / "work" / "sets" / "000.h5"
    before = kept.stat().st_mtime_ns
    caplog.clear()
    assert _attack_set(d, shards, tmp_path / "a", stamp) == ["000.h5", "001.h5"]
    assert "reusing the finished shard" in caplog.text and caplog.text.count("reusing") == 1
    assert not (tmp_path / "a" / "work").exists()
    assert (tmp_path / "a" / "set" / "000.h5").stat().st_mtime_ns == before  # moved, not redone
    _attack_set(d, shards, tmp_path / "b", stamp)
    for sub in ("set", "control"):
        for name in ("000.h5", "001.h5"):
            a = read_attack(tmp_path / "a" / sub / name)
            b = read_attack(tmp_path / "b" / sub / name)
            assert np.array_equal(a["images"], b["images"]), (sub, name)
    # other settings: the finished shard of the killed run is not reused
    with pytest.raises(Killed):
        _attack_set(d, shards, tmp_path / "c", stamp, after_shard=kill)
    caplog.clear()
    _attack_set(d, shards, tmp_path / "c", {**stamp, "code": "v2"})
    assert "reusing" not in caplog.text


def test_stale_or_mismatched_checkpoints_are_detected(tiny, cache, tmp_path):
    d, _, _ = tiny
    with pytest.raises(WorkflowError, match="stale"):
        read_attack(cache, expected_sha256="0" * 64)
    stale = tmp_path / "metrics.json"
    stale.write_text(json.dumps({"threshold": 0.5, "checkpoint_sha256": "f" * 64}))
    with pytest.raises(WorkflowError, match="model.keras.*is not the checkpoint"):
        model_record(d / "model.keras", stale)


def test_noise_control_shuffles_each_perturbation(tiny, tmp_path):
    d, images, _ = tiny
    # a random start makes perturbations with many different values per image
    cache = tmp_path / "rs.h5"
    _attack(
        d,
        cache,
        eps=16,
        cfg={"method": "pgd", "step_fraction": 0.1, "steps": 2, "random_start": True},
    )
    out = tmp_path / "ctrl.h5"
    control_shard(
        attack_path=cache,
        model_path=d / "model.keras",
        metrics_path=d / "metrics.json",
        out_path=out,
        image_size=SIZE,
        batch_size=16,
    )
    adv, ctrl = read_attack(cache), read_attack(out)
    assert ctrl["attrs"]["control"] == "shuffled"
    assert (ctrl["image_index"] == adv["image_index"]).all()
    d_adv = adv["images"].astype(int) - images.astype(int)
    d_ctrl = ctrl["images"].astype(int) - images.astype(int)
    assert np.abs(d_ctrl).max() <= 16 and not np.array_equal(d_adv, d_ctrl)
    # same values, other places (these images are far from 0 and 255: nothing is clipped)
    for a, c in zip(d_adv, d_ctrl, strict=True):
        assert sorted(a.ravel()) == sorted(c.ravel())
    assert np.allclose(ctrl["linf"], adv["linf"]) and np.allclose(ctrl["l2"], adv["l2"], rtol=1e-5)
    # the source's own probabilities on the control images are recorded
    assert not np.allclose(ctrl["source_adv_prob"], adv["source_adv_prob"])


def test_shuffle_is_seeded_and_clipped():
    clean = np.full((2, 4, 4), 250, np.uint8)
    adv = clean.copy()
    adv[:, 0, 0] = 255
    adv[:, 1, 1] = 242
    a = shuffle_perturbations(clean, adv, seed=1)
    assert np.array_equal(a, shuffle_perturbations(clean, adv, seed=1))
    assert a.max() <= 255 and (a.astype(int) - 250).min() >= -8


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


def test_l2_attack_cache_keeps_its_budget_in_l2_units(tiny, tmp_path):
    """L2 eps is the perturbation's L2 norm in [0, 1] pixel units, recorded with its unit."""
    d, images, _ = tiny
    out = tmp_path / "l2.h5"
    _attack(d, out, eps=0.5, cfg={"method": "pgd", "norm": "l2", "step_fraction": 0.25, "steps": 5})
    cache = read_attack(out)
    delta = (cache["images"].astype(float) - images.astype(float)).reshape(len(images), -1) / 255
    norms = np.sqrt((delta**2).sum(1))
    assert norms.max() <= 0.5 + 1e-9 and norms.mean() > 0.25
    assert np.allclose(cache["l2"], norms, atol=1e-6)
    assert cache["attrs"]["norm"] == "l2" and "L2" in cache["attrs"]["eps_unit"]


def _checklist_runs(d, out, runs):
    return run_checklist(
        model_path=d / "model.keras",
        metrics_path=d / "metrics.json",
        shard_paths=[d / "000.h5"],
        out_csv=out,
        runs=runs,
        target="tiny",
        data_task="task",
        image_size=SIZE,
        batch_size=16,
        n_bootstrap=50,
        confidence=0.95,
        seed=0,
    )


def test_checklist_runs_score_the_stored_images_as_the_grid_does(tiny, tmp_path):
    """A checklist run's AUROC is that of the attack job's cache of the same attack (FGSM has
    no randomness); the unbounded attack drives it to 0; the rows are checked when read."""
    d, _, labels = tiny
    pgd = {"method": "pgd", "step_fraction": 0.25, "steps": 8}
    runs = [
        {
            "attack": "pgd",
            "eps": 16,
            "variant": v,
            "config": c,
            "variant_eps": e,
            "variant_steps": s,
        }
        for v, c, e, s in [
            ("single_step", {**pgd, "method": "fgsm"}, 16, 1),
            ("unbounded", pgd, 255, 8),
            ("more_steps", {**pgd, "steps": 16}, 16, 16),
        ]
    ]
    out = tmp_path / "tiny.csv"
    written = _checklist_runs(d, out, runs)
    assert list(written.columns) == list(RUN_COLUMNS)
    rows = written.set_index("variant")
    fgsm = tmp_path / "fgsm" / "000.h5"
    _attack(d, fgsm, eps=16, cfg={"method": "fgsm"})
    cached = read_attack(fgsm)
    assert rows.loc["single_step", "adv_auroc"] == pytest.approx(
        auroc(cached["labels"], cached["source_adv_prob"])
    )
    assert rows.loc["unbounded", "adv_auroc"] <= 0.05
    assert (rows["n_images"] == len(labels)).all()
    sha = model_record(d / "model.keras", d / "metrics.json")["sha256"]
    assert len(read_runs([out], {"tiny": sha})) == 3
    with pytest.raises(WorkflowError, match="another checkpoint of 'tiny'"):
        read_runs([out], {"tiny": "0" * 64})
