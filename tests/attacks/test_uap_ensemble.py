"""Universal perturbations (cxrtransfer.attacks.uap), ensemble sources (models.build_ensemble, plan)
and the summary's best-attack table, on small real Keras models."""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from cxrtransfer import WorkflowError  # noqa: E402
from cxrtransfer.attacks.job import attack_set  # noqa: E402
from cxrtransfer.attacks.steps import cross_entropy  # noqa: E402
from cxrtransfer.attacks.uap import (  # noqa: E402
    UapSpec,
    apply_uap,
    craft_uap,
    craft_uap_job,
    read_uap,
    uap_spec_from_config,
)
from cxrtransfer.core.files import file_sha256  # noqa: E402
from cxrtransfer.data import adversarial_cache as AC  # noqa: E402
from cxrtransfer.data.adversarial_cache import read_attack  # noqa: E402
from cxrtransfer.metrics.measures import flip_rate  # noqa: E402
from cxrtransfer.models.build import build_ensemble  # noqa: E402
from cxrtransfer.models.checkpoints import load_checkpoint  # noqa: E402
from cxrtransfer.plan import checks  # noqa: E402
from cxrtransfer.plan import study as PL  # noqa: E402

SIZE = 20


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    x = rng.integers(70, 130, (n, SIZE, SIZE)).astype(np.uint8)
    x[y == 1, 5:15, 5:15] += 30  # a bright square = the finding
    return x, y


def _model(seed, size=SIZE, filters=6):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(filters, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def members():
    x, y = _data(96, 0)
    out = []
    for seed in (1, 2):
        m = _model(seed, filters=4 + 2 * seed)
        m.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
        m.fit(x[..., None] / 255.0, y, epochs=60, batch_size=16, verbose=0)
        acc = ((m.predict(x[..., None] / 255.0, verbose=0)[:, 1] >= 0.5) == y).mean()
        assert acc > 0.9, f"member {seed} did not learn ({acc})"
        out.append(m)
    return out


# --- ensembles ----------------------------------------------------------------------------


def test_ensemble_is_the_softmax_of_the_members_mean_logits(members, tmp_path):
    x = _data(16, 5)[0][..., None].astype(np.float32) / 255.0
    ens = build_ensemble(members, ["a", "b"], SIZE)
    # logits of a softmax output up to a per-example constant: log p (cancels in softmax)
    logs = np.mean([np.log(m.predict(x, verbose=0).astype(np.float64)) for m in members], 0)
    want = np.exp(logs) / np.exp(logs).sum(1, keepdims=True)
    got = ens.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # not simply the mean of the probabilities (the test can tell the two apart)
    assert not np.allclose(got, np.mean([m.predict(x, verbose=0) for m in members], 0), atol=1e-4)
    ens.save(tmp_path / "ens.keras")
    back = load_checkpoint(tmp_path / "ens.keras", SIZE)  # safe mode, the model contract
    np.testing.assert_allclose(back.predict(x, verbose=0), got, atol=1e-6)


def test_ensemble_refuses_members_of_other_sizes_or_heads(members):
    with pytest.raises(WorkflowError, match="different input sizes"):
        build_ensemble([members[0], _model(3, size=SIZE + 4)], ["a", "c"])
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    probs = keras.layers.Dense(2)(x)
    no_softmax = keras.Model(inp, keras.layers.Activation("softmax")(probs))
    with pytest.raises(WorkflowError, match="member d: its last layer is Activation"):
        build_ensemble([members[0], no_softmax], ["a", "d"])


@pytest.fixture
def config(root):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg.setdefault("noise_control", True)
    return cfg


def test_plan_names_ensembles_and_checks_them(config):
    cfg = copy.deepcopy(config)
    cfg["grid"].append(
        {"sources": [["pneumothorax_small_s2", "pneumothorax_small"]], "data_task": "own"}
    )
    checks.check_config(cfg)
    name = "pneumothorax_small_s2+pneumothorax_small"
    assert PL.ensembles(cfg) == [name]
    sets = PL.adversarial_sets(cfg, controls=False)
    assert {(s.source, s.data_task) for s in sets if s.source == name} == {(name, "pneumothorax")}
    facts = PL.source_facts(cfg, name)
    assert facts["members"] == ["pneumothorax_small_s2", "pneumothorax_small"]
    assert facts["task"] == "pneumothorax" and facts["seed"] == "2+1"
    assert PL.P.MODEL.format(model=name) in PL.final_outputs(cfg)
    for members, msg in (
        (["pneumothorax_small"], "has 1 member; an ensemble needs at least two"),
        (["pneumothorax_small", "nope"], r"unknown model\(s\) \['nope'\]"),
        (["pneumothorax_small", "cardiomegaly_small"], "mixes models of the tasks"),
        (["pneumothorax_small", "pneumothorax_small"], "names a model twice"),
    ):
        bad = copy.deepcopy(config)
        bad["grid"].append({"sources": [members], "data_task": "own"})
        with pytest.raises(WorkflowError, match=r"grid\[2\]\.sources: .*" + msg):
            checks.check_config(bad)


# --- universal perturbations ----------------------------------------------------------------


def test_uap_spec_validation_names_the_key(config):
    assert uap_spec_from_config({"method": "uap", "split": "train"}, 8).split == "train"
    with pytest.raises(WorkflowError, match="split: .* never on 'test'"):
        uap_spec_from_config({"method": "uap", "split": "test"}, 8)
    with pytest.raises(WorkflowError, match="norm: .* L-inf"):
        uap_spec_from_config({"method": "uap", "norm": "l2"}, 8)
    with pytest.raises(WorkflowError, match="momentum have no meaning for method uap"):
        uap_spec_from_config({"method": "uap", "momentum": 1.0}, 8)
    # the schema's defaults of the per-image attacks are filled in for every attack: ignored
    assert uap_spec_from_config({"method": "uap", "momentum": 0.0}, 8).steps == 40
    assert uap_spec_from_config({"method": "uap", "steps": 12}, 8).steps == 12
    bad = copy.deepcopy(config)
    bad["attacks"]["uap"] = {"method": "uap", "split": "test"}
    with pytest.raises(WorkflowError, match=r"attacks\.uap \(at eps 8\): split"):
        checks.check_config(bad)


def test_uap_counts_steps_and_reaches_its_eps_on_a_set_smaller_than_one_batch(members):
    """The audit's case: 59 crafting images and batch 64 made an 'epoch' one step, so 5 epochs
    of eps/10 reached 4/255 at eps 8. Steps are optimiser steps whatever the set's size."""
    x, y = _data(12, 5)
    spec = uap_spec_from_config({"method": "uap", "step_fraction": 0.1}, 8)
    assert spec.steps == 40
    delta, losses = craft_uap(members[0], x, y, spec, batch_size=64)
    assert len(losses) == 40 and int(np.abs(delta).max()) == 8


def test_uap_refuses_epochs_and_too_few_steps():
    with pytest.raises(WorkflowError, match="replace epochs with steps"):
        uap_spec_from_config({"method": "uap", "epochs": 5}, 8)
    with pytest.raises(WorkflowError, match=r"5 signed steps of 0\.8/255 cannot reach eps 8/255"):
        uap_spec_from_config({"method": "uap", "steps": 5, "step_fraction": 0.1}, 8)
    uap_spec_from_config({"method": "uap", "steps": 10, "step_fraction": 0.1}, 8)


def test_a_uap_short_of_its_label_fails_the_job_and_writes_nothing(members, tmp_path, monkeypatch):
    import cxrtransfer.attacks.uap as U

    d = tmp_path
    members[0].save(d / "model.keras")
    sha = file_sha256(d / "model.keras")
    (d / "metrics.json").write_text(json.dumps({"threshold": 0.5, "checkpoint_sha256": sha}))
    xv, yv = _data(16, 23)
    _write_shard(d / "val.h5", xv, yv)
    real = U.craft_uap

    def halved(*args, **kwargs):  # what 5 "epochs" of one step did: half the budget
        delta, losses = real(*args, **kwargs)
        return (delta // 2).astype(np.int16), losses

    monkeypatch.setattr(U, "craft_uap", halved)
    with pytest.raises(WorkflowError, match=r"labelled eps 8/255 reaches only 4/255"):
        U.craft_uap_job(
            model_path=d / "model.keras",
            metrics_path=d / "metrics.json",
            image_size=SIZE,
            shard_paths=[d / "val.h5"],
            out_path=d / "uap.h5",
            attack_name="uap",
            attack_cfg={"method": "uap", "split": "val"},
            eps=8,
            batch_size=16,
            source_model="m",
        )
    assert not (d / "uap.h5").exists()
    AC.check_reached(7, 8, "x")  # one grey level short is rounding, accepted
    with pytest.raises(WorkflowError, match="more than one grey level short"):
        AC.check_reached(6, 8, "x")


def test_uap_raises_the_loss_on_unseen_images_within_budget(members):
    model = members[0]
    x, y = _data(128, 7)
    spec = UapSpec(eps=16, step=4, steps=4 * 4, seed=3)
    delta, losses = craft_uap(model, x, y, spec, batch_size=32)
    assert delta.dtype == np.int16 and delta.shape == (SIZE, SIZE)
    assert np.abs(delta).max() <= 16 and np.abs(delta).max() > 0
    again, _ = craft_uap(model, x, y, spec, batch_size=32)
    assert np.array_equal(delta, again)  # seeded
    assert len(losses) == 16  # one loss per optimiser step (4 passes of 4 minibatches)
    held, yh = _data(64, 11)
    adv = apply_uap(held, delta)
    assert adv.dtype == np.uint8
    d = adv.astype(int) - held.astype(int)
    assert np.abs(d).max() <= 16
    np.testing.assert_array_equal(adv, np.clip(held.astype(int) + delta, 0, 255))

    def loss(images):
        return float(np.mean(cross_entropy(yh, model(images[..., None] / 255.0)).numpy()))

    assert loss(adv) > loss(held) + 0.05
    p0 = model.predict(held[..., None] / 255.0, verbose=0)[:, 1] >= 0.5
    p1 = model.predict(adv[..., None] / 255.0, verbose=0)[:, 1] >= 0.5
    assert flip_rate(p0, p1) > 0


def _write_shard(path, images, labels):
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels.astype(np.int8)
        f["image_index"] = np.array([f"{i:08d}_000.png" for i in range(len(images))], dtype="S")
        f["patient_id"] = (np.arange(len(images)) // 2).astype(np.int32)


def test_uap_job_then_attack_job_apply_it_exactly(members, tmp_path):
    d = tmp_path
    members[0].save(d / "model.keras")
    sha = file_sha256(d / "model.keras")
    (d / "metrics.json").write_text(json.dumps({"threshold": 0.5, "checkpoint_sha256": sha}))
    xv, yv = _data(64, 21)
    xt, yt = _data(40, 22)
    _write_shard(d / "val.h5", xv, yv)
    _write_shard(d / "000.h5", xt, yt)
    cfg = {"method": "uap", "split": "val", "steps": 8, "step_fraction": 0.25}
    common = dict(model_path=d / "model.keras", metrics_path=d / "metrics.json", image_size=SIZE)
    info = craft_uap_job(
        **common,
        shard_paths=[d / "val.h5"],
        out_path=d / "uap.h5",
        attack_name="uap",
        attack_cfg=cfg,
        eps=8,
        batch_size=16,
        source_model="m",
    )
    delta, attrs = read_uap(d / "uap.h5", sha)
    assert attrs["split"] == "val" and attrs["crafting_shards_sha256"] == json.dumps(
        [file_sha256(d / "val.h5")]
    )
    # the recorded flip rate is the model's: recomputed from its predictions on the crafting
    # images, clean and with the stored perturbation (decision at the threshold, 0.5)
    from cxrtransfer.data.shards import read_shard
    from cxrtransfer.models.inference import predict_probs

    crafting = read_shard(d / "val.h5", SIZE)["images"]
    model = load_checkpoint(d / "model.keras", SIZE)
    before = predict_probs(model, crafting, 16) >= 0.5
    after = predict_probs(model, apply_uap(crafting, delta), 16) >= 0.5
    assert info["crafting_flip_rate"] == pytest.approx(float(np.mean(before != after)))
    assert attrs["crafting_flip_rate"] == pytest.approx(info["crafting_flip_rate"])
    assert info["steps"] == 8 and len(info["step_losses"]) == 8 and info["max_linf_255"] >= 7
    with pytest.raises(WorkflowError, match="another checkpoint"):
        read_uap(d / "uap.h5", "0" * 64)
    attack_set(
        **common,
        shard_paths=[d / "000.h5"],
        out_dir=d / "set",
        control_dir=d / "control",
        work_dir=d / "work",
        stamp={"x": 1},
        attack_name="uap",
        attack_cfg=cfg,
        eps=8,
        batch_size=16,
        source_model="m",
        data_task="other",
        uap_path=d / "uap.h5",
    )
    cache = read_attack(d / "set" / "000.h5", expected_sha256=sha)
    np.testing.assert_array_equal(cache["images"], apply_uap(xt, delta))
    assert cache["attrs"]["method"] == "uap" and cache["attrs"]["uap_sha256"] == file_sha256(
        d / "uap.h5"
    )
    control = read_attack(d / "control" / "000.h5", expected_sha256=sha)
    assert control["attrs"]["control"] == "shuffled"
    assert not np.array_equal(control["images"], cache["images"])


def test_a_grid_entry_can_run_some_of_the_budgets(config):
    cfg = copy.deepcopy(config)
    cfg["eps"] = [2, 8]
    cfg["grid"].append(
        {"sources": ["pneumothorax_small_s2"], "data_task": "cardiomegaly", "eps": [8]}
    )
    checks.check_config(cfg)
    sets = PL.adversarial_sets(cfg, controls=False)
    cross = {
        s.eps for s in sets if s.source == "pneumothorax_small_s2" and s.data_task == "cardiomegaly"
    }
    assert cross == {"8"}
    assert {s.eps for s in sets if s.source == "pneumothorax_small_s2"} == {"2", "8"}
    cfg["grid"][-1]["eps"] = [4]
    with pytest.raises(WorkflowError, match=r"grid\[2\]\.eps: \[4\] is not a budget"):
        checks.check_config(cfg)
