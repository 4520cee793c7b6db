"""The DeepFool-based universal perturbation (cxrtransfer.attacks.uap_deepfool; Moosavi-Dezfooli
et al. 2017, Algorithm 1) on a small real Keras model, against a reference written here from the
papers: DeepFool's two-class case (Moosavi-Dezfooli et al. 2016, Algorithm 1) on the source's
log-odds margin."""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from cxrtransfer import WorkflowError  # noqa: E402
from cxrtransfer.attacks import uap_deepfool as DF  # noqa: E402
from cxrtransfer.attacks.uap import (  # noqa: E402
    apply_uap,
    craft_uap_job,
    read_uap,
    uap_spec_from_config,
)
from cxrtransfer.core.files import file_sha256  # noqa: E402
from cxrtransfer.data import shards as SH  # noqa: E402
from cxrtransfer.metrics.measures import flip_rate  # noqa: E402
from cxrtransfer.models.inference import predict_probs  # noqa: E402
from cxrtransfer.plan import checks  # noqa: E402

SIDE = 16
THRESHOLD = 0.4  # not 0.5: the margin's shift by the threshold is exercised


def _disc() -> np.ndarray:
    """The finding: a central disc of radius 4 (bool (H, W))."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    return (yy - SIDE / 2 + 0.5) ** 2 + (xx - SIDE / 2 + 0.5) ** 2 <= 16


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mid-grey noise; the finding is a brighter central disc (pixels stay inside (0, 255), so
    the reference's unclipped steps equal the clipped ones)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int32)
    images = rng.integers(90, 140, (n, SIDE, SIDE)).astype(np.int16)
    images[labels == 1] += 30 * _disc()
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def source():
    keras.utils.set_random_seed(4)
    inp = keras.Input((SIDE, SIDE, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="tanh")(inp)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images, labels = _images(80, 0)
    model.fit(images[..., None] / 255.0, labels, epochs=50, batch_size=16, verbose=0)
    acc = ((predict_probs(model, images, 32) >= THRESHOLD) == labels).mean()
    assert acc > 0.85, f"the source did not learn ({acc})"
    return model


def _deepfool_spec(eps: float, **settings):
    return uap_spec_from_config({"method": "uap", "algorithm": "deepfool", **settings}, eps)


# --- the reference, from the papers --------------------------------------------------------


def _reference_margin_and_grad(model, x: np.ndarray) -> tuple[float, np.ndarray]:
    """f(x) = log(p1 / p0) - log(t / (1 - t)) of one image (1, H, W, 1) and its gradient."""
    point = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(point)
        p = model(point, training=False)[0]
        f = tf.math.log(p[1]) - tf.math.log(p[0]) - np.log(THRESHOLD / (1 - THRESHOLD))
    return float(f), tape.gradient(f, point).numpy().astype(np.float64)


def _reference_deepfool(model, x: np.ndarray, overshoot: float, max_steps: int) -> np.ndarray:
    """Two-class DeepFool: r_i = -(f + 1e-4 sign f) grad / ||grad||^2 at x + (1 + overshoot)
    sum r, until the sign of f changes; the perturbation is (1 + overshoot) sum r."""
    f0, _ = _reference_margin_and_grad(model, x)
    total = np.zeros_like(x, np.float64)
    for _ in range(max_steps):
        f, grad = _reference_margin_and_grad(model, x + (1 + overshoot) * total)
        if np.sign(f) != np.sign(f0):
            break
        total -= np.sign(f) * (abs(f) + 1e-4) / np.sum(grad**2) * grad
    return (1 + overshoot) * total


# --- (a) one image: plain DeepFool -----------------------------------------------------------


@pytest.mark.parametrize("eps", [200.0, 1.5])
def test_with_one_image_the_uap_is_plain_deepfool_projected(source, eps):
    """eps 200: the projection does not bind and v is DeepFool's minimal perturbation; eps 1.5:
    it does, and v is that perturbation clipped to the eps ball."""
    images, _ = _images(6, 3)
    image = images[np.argmax(predict_probs(source, images, 8) < THRESHOLD)][None]
    spec = _deepfool_spec(eps, max_passes=1, overshoot=0.02)
    v, levels, history = DF.craft_uap_deepfool(source, image, spec, THRESHOLD, 8)
    want = _reference_deepfool(source, image[..., None] / 255.0, 0.02, spec.deepfool_steps)
    f_adv, _ = _reference_margin_and_grad(source, image[..., None] / 255.0 + want)
    assert f_adv >= 0, "the reference's perturbation does not change the decision"
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(v, np.clip(want, -eps / 255, eps / 255), atol=2e-5, rtol=1e-3)
    assert history.passes == 1 and history.images_updated == [1]
    assert levels.dtype == np.int16 and np.abs(levels).max() <= int(eps)
    if eps < np.abs(want).max() * 255:
        assert np.isclose(np.abs(v).max(), eps / 255)  # the budget binds


# --- (b) the fooling rate over passes ---------------------------------------------------------


def test_the_fooling_rate_is_recorded_per_pass_and_never_decreases(source):
    images, _ = _images(40, 5)
    spec = _deepfool_spec(16.0, delta=0.01, max_passes=4, seed=1)
    v, levels, history = DF.craft_uap_deepfool(source, images, spec, THRESHOLD, 16)
    assert history.passes == len(history.pass_fooling_rates) == len(history.images_updated)
    assert history.fooling_rates == list(np.maximum.accumulate(history.pass_fooling_rates))
    assert all(
        b >= a for a, b in zip(history.fooling_rates[:-1], history.fooling_rates[1:], strict=True)
    )
    # the last kept rate is that of the returned (stored) perturbation on the crafting images
    clean = predict_probs(source, images, 16) >= THRESHOLD
    adv = predict_probs(source, apply_uap(images, levels), 16) >= THRESHOLD
    assert flip_rate(clean, adv) == history.fooling_rates[-1] > 0
    np.testing.assert_array_equal(DF.perturbed(images, levels), apply_uap(images, levels))
    again = DF.craft_uap_deepfool(source, images, spec, THRESHOLD, 16)
    np.testing.assert_array_equal(again[1], levels)  # seeded passes


def test_a_pass_that_lowers_the_fooling_rate_is_undone(source, monkeypatch):
    """Planted passes: the second one wipes out the perturbation (rate 0); the first pass's
    perturbation is kept, and the third pass starts from it."""
    images, _ = _images(20, 9)
    disc = _disc()
    strong = (60 / 255 * disc[None, ..., None]).astype(np.float32)  # plants the finding
    planted = iter([strong, np.zeros_like(strong), strong])
    starts = []

    def planted_pass(deepfool, imgs, order, v, eps):
        starts.append(np.asarray(v).copy())
        return DF.project_linf(next(planted), eps), 1

    monkeypatch.setattr(DF, "deepfool_pass", planted_pass)
    spec = _deepfool_spec(60.0, delta=0.01, max_passes=3)
    _, levels, history = DF.craft_uap_deepfool(source, images, spec, THRESHOLD, 16)
    first = history.pass_fooling_rates[0]
    assert first > 0 and history.pass_fooling_rates[1] == 0.0
    assert history.fooling_rates == [first, first, first]
    np.testing.assert_array_equal(starts[2], DF.project_linf(strong, 60 / 255))
    np.testing.assert_array_equal(levels, 60 * disc)
    assert history.stopped == "max_passes"


# --- (c) the job: within eps, reached or stopped by the fooling rate ----------------------------


@pytest.fixture
def job(source, tmp_path, monkeypatch):
    """Run rule uap's job on planted crafting images (read_shard returns them; the shard file
    is only hashed) with the source checkpoint at threshold 0.4."""
    source.save(tmp_path / "model.keras")
    sha = file_sha256(tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text(
        json.dumps({"threshold": THRESHOLD, "checkpoint_sha256": sha})
    )
    images, labels = _images(24, 13)
    (tmp_path / "val.h5").write_bytes(images.tobytes())
    monkeypatch.setattr(SH, "read_shard", lambda p, size: {"images": images, "labels": labels})

    def run(eps, **settings):
        out = tmp_path / f"uap{eps:g}.h5"
        craft_uap_job(
            model_path=tmp_path / "model.keras",
            metrics_path=tmp_path / "metrics.json",
            shard_paths=[tmp_path / "val.h5"],
            out_path=out,
            attack_name="uap_df",
            attack_cfg={"method": "uap", "algorithm": "deepfool", **settings},
            eps=eps,
            image_size=SIDE,
            batch_size=8,
            source_model="m",
        )
        delta, attrs = read_uap(out, sha)
        return delta, attrs, images

    return run


def test_the_job_reaches_eps_when_the_fooling_rate_stays_short(job):
    delta, attrs, _ = job(2.0, delta=0.01, max_passes=3)
    assert attrs["algorithm"] == "deepfool" and "steps" not in attrs and "step_losses" not in attrs
    rates = json.loads(attrs["fooling_rates"])
    assert attrs["stopped"] == "max_passes" and attrs["passes"] == 3 == len(rates)
    assert rates[-1] < 0.99 and attrs["crafting_flip_rate"] == rates[-1]
    assert attrs["max_linf_255"] == int(np.abs(delta).max()) == 2  # within eps and reaching it


def test_the_job_stops_by_the_fooling_rate_below_eps(job):
    delta, attrs, images = job(60.0, delta=0.5, max_passes=5)
    rates = json.loads(attrs["fooling_rates"])
    assert attrs["stopped"] == "fooling_rate" and rates[-1] >= 0.5
    assert attrs["passes"] == len(rates) < 5 and attrs["crafting_flip_rate"] == rates[-1]
    # DeepFool's perturbations are minimal: it stopped well inside its eps, and that is accepted
    assert 0 < attrs["max_linf_255"] == int(np.abs(delta).max()) < 59
    assert attrs["max_linf_255"] <= 60


def test_a_deepfool_uap_short_of_eps_and_of_its_fooling_rate_fails(job, monkeypatch):
    def short(model, images, spec, threshold, batch_size, progress=None):
        history = DF.DeepFoolHistory([0.1], [0.1], [3], "max_passes")
        v = np.full((1, SIDE, SIDE, 1), 1 / 255, np.float32)
        return v, DF.to_levels(v, spec.levels), history

    monkeypatch.setattr(DF, "craft_uap_deepfool", short)
    with pytest.raises(WorkflowError, match=r"after max_passes 2 passes .* reaches only 1/255"):
        job(8.0, max_passes=2)


# --- (d) bad settings, refused before any model is loaded ---------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithm": "gradient"}, r"algorithm must be one of sgd, deepfool"),
        ({"algorithm": "deepfool", "delta": 0.0}, r"delta must be in \(0, 1\)"),
        ({"algorithm": "deepfool", "delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"algorithm": "deepfool", "max_passes": 0}, r"max_passes must be >= 1"),
        ({"delta": 0.2}, r"setting\(s\) delta have no meaning for a uap with algorithm sgd"),
        ({"algorithm": "deepfool", "steps": 9}, r"setting\(s\) steps have no meaning .* deepfool"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key(tmp_path, root, settings, message):
    cfg = {"method": "uap", **settings}
    with pytest.raises(WorkflowError, match=message):  # no checkpoint exists: never loaded
        craft_uap_job(
            model_path=tmp_path / "missing.keras",
            metrics_path=tmp_path / "missing.json",
            shard_paths=[],
            out_path=tmp_path / "uap.h5",
            attack_name="uap",
            attack_cfg=cfg,
            eps=8,
            image_size=SIDE,
            batch_size=8,
            source_model="m",
        )
    config = yaml.safe_load((root / "config" / "test.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["attacks"]["uap"] = cfg
    with pytest.raises(WorkflowError, match=r"attacks\.uap \(at eps \d+\): " + message):
        checks.check_config(bad)


def test_the_default_algorithm_records_what_sgd_recorded_before():
    """An entry without algorithm is sgd and its settings (hence its file's attributes) have
    no DeepFool key; a deepfool entry has no sgd step."""
    sgd = uap_spec_from_config({"method": "uap"}, 8).attrs()
    assert sgd == {
        "eps": 8.0,
        "step": 0.8,
        "steps": 40,
        "split": "val",
        "max_images": 0,
        "loss_clamp": 10.0,
        "seed": 0,
        "method": "uap",
        "norm": "linf",
        "eps_unit": "1/255",
    }
    deepfool = _deepfool_spec(8, delta=0.1).attrs()
    assert {k: deepfool[k] for k in ("algorithm", "delta", "max_passes", "overshoot")} == {
        "algorithm": "deepfool",
        "delta": 0.1,
        "max_passes": 10,
        "overshoot": 0.02,
    }
    assert not {"step", "steps", "loss_clamp"} & set(deepfool)
