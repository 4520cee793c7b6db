"""Tests of cxrtransfer.attacks on small real Keras CNNs trained on a synthetic pattern."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cxrtransfer import WorkflowError  # noqa: E402
from cxrtransfer.attacks import (  # noqa: E402
    AttackSpec,
    cross_entropy,
    diverse_input,
    make_attack,
    quantise,
    run_attack_batches,
    spec_from_config,
)

SIZE = 16


def synthetic(n: int, seed: int):
    """uint8 (n, SIZE, SIZE) noise images; label 1 images carry a bright 4x4 patch."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.35, 0.6, size=(n, SIZE, SIZE))
    y = rng.integers(0, 2, size=n)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, SIZE - 4, size=2)
        x[i, r : r + 4, c : c + 4] += 0.15
    return np.round(x * 255).astype(np.uint8), y.astype(np.int32)


def as_float(u8):
    return u8[..., None].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    xtr, ytr = synthetic(1024, 1)
    model.fit(as_float(xtr), ytr, epochs=10, batch_size=32, verbose=0)
    x_u8, y = synthetic(128, 2)
    acc = np.mean(np.argmax(model.predict(as_float(x_u8), verbose=0), 1) == y)
    assert acc >= 0.9, f"test model did not learn the pattern (accuracy {acc:.2f})"
    return model, x_u8, y


def losses(model, x, y):
    return cross_entropy(y, model(x, training=False)).numpy()


def predict(model, x):
    return np.argmax(model(x, training=False).numpy(), axis=1)


SPECS = {
    "linf": dict(method="pgd", norm="linf", eps=8, step=2, steps=5),
    "linf_targeted_rs": dict(
        method="pgd", norm="linf", eps=4, step=1, steps=5, targeted=True, random_start=True
    ),
    "l2": dict(method="pgd", norm="l2", eps=60, step=15, steps=5),
    "l2_targeted_rs_restarts": dict(
        method="pgd", norm="l2", eps=60, step=15, steps=3, targeted=True, random_start=True,
        restarts=2,
    ),
    "mi_di": dict(method="pgd", eps=8, step=2, steps=5, momentum=1.0, diversity_prob=0.5,
                  diversity_scale=1.3, random_start=True),
    "l2_mi_di": dict(method="pgd", norm="l2", eps=60, step=15, steps=5, momentum=1.0,
                     diversity_prob=1.0),
    "fgsm": dict(method="fgsm", eps=8),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SPECS))
def test_outputs_within_budget_and_range(trained, name):
    model, x_u8, y = trained
    spec = AttackSpec(**SPECS[name])
    attack = make_attack(model, spec)
    x_u8 = x_u8[:48].copy()
    x_u8[:16, :3] = 0  # pixels at the range limits, where clipping matters
    x_u8[:16, -3:] = 255
    x = as_float(x_u8)
    adv = attack(x, y[:48]).numpy()
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    d = (adv - x).reshape(len(x), -1).astype(np.float64)
    if spec.norm == "linf":
        assert np.abs(d).max() <= spec.eps / 255 + 1e-6
    else:
        assert np.linalg.norm(d, axis=1).max() <= spec.eps / 255 * (1 + 1e-5)
    assert np.abs(d).max() > 0.5 / 255, "the attack did not perturb anything"
    # Same result on a second call (seeded), a smaller batch reuses the same trace.
    np.testing.assert_array_equal(attack(x, y[:48]).numpy(), adv)
    attack(x[:5], y[:5])
    assert attack.graph.experimental_get_tracing_count() == 1


def test_xla_within_budget_and_agrees(trained):
    model, x_u8, y = trained
    spec = AttackSpec(**SPECS["mi_di"])
    x = as_float(x_u8[:48])
    adv_xla = make_attack(model, spec, jit_compile=True)(x, y[:48]).numpy()
    adv = make_attack(model, spec)(x, y[:48]).numpy()
    assert np.abs(adv_xla - x).max() <= spec.eps / 255 + 1e-6
    assert 0.0 <= adv_xla.min() and adv_xla.max() <= 1.0
    # Random draws happen outside the XLA cluster: same starts and DI transforms.
    assert np.mean(np.abs(adv_xla - adv) < 1e-5) >= 0.99
    assert np.mean(predict(model, adv_xla) == predict(model, adv)) >= 0.95


def test_diverse_input_is_resize_pad_resize():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32))
    scale = 1.5
    big = int(SIZE * scale)
    u = tf.constant([0.1, 0.7, 0.3, 0.9], tf.float32)  # u[0] < prob: transform applied
    rnd = SIZE + int(0.7 * (big - SIZE))
    top, left = int(0.3 * (big - rnd + 1)), int(0.9 * (big - rnd + 1))
    ref = tf.image.resize(x, (rnd, rnd))
    ref = tf.pad(ref, [[0, 0], [top, big - rnd - top], [left, big - rnd - left], [0, 0]])
    ref = tf.image.resize(ref, (SIZE, SIZE))
    out = diverse_input(x, u, 0.5, scale)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    assert np.abs(out.numpy() - x.numpy()).max() > 0.05
    same = diverse_input(x, tf.constant([0.9, 0.7, 0.3, 0.9]), 0.5, scale)  # not applied
    np.testing.assert_array_equal(same.numpy(), x.numpy())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [8.0, 2.55, 1.0])
def test_quantise_integer_bound(norm, eps):
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 256, size=(20, 12, 12)).astype(np.uint8)
    clean[0] = 0
    clean[1] = 255
    clean[3] = 128
    c = clean.astype(np.float64) / 255
    if norm == "linf":
        d = rng.uniform(-1, 1, size=c.shape) * eps / 255
    else:
        d = rng.normal(size=c.shape)
        d *= eps / 255 / np.linalg.norm(d.reshape(20, -1), axis=1)[:, None, None]
        d[2] = 0.0
        d[2, :5, :4] = 0.55 / 255  # rounds to +1 in 20 pixels: norm 4.47, exceeds 2.55
        d[3] = 0.0
        d[3, 4, 4] = 0.99 * eps / 255  # one pixel: rounds to round(0.99 eps), inside budget
    adv = np.clip(c + d * (1 + 1e-6), 0, 1)  # a little float excess, as from an attack
    for a in (adv, adv[..., None]):
        out = quantise(
            clean if a.ndim == 3 else clean[..., None],
            a,
            AttackSpec("pgd", norm, eps, step=eps / 4),
        )
        assert out.dtype == np.uint8 and out.shape == clean.shape
        q = out.astype(np.int64) - clean.astype(np.int64)
        if norm == "linf":
            assert np.abs(q).max() <= np.floor(eps)
            if eps >= 1:
                assert np.abs(q).max() == np.floor(eps)  # not trivially the clean image
        else:
            assert np.linalg.norm(q.reshape(20, -1), axis=1).max() <= eps
            r = round(0.99 * eps)  # nearest if inside the budget, else truncated
            assert q[3, 4, 4] == (r if r <= eps else np.floor(0.99 * eps))
            if eps < 4.47:
                assert np.abs(q[2]).max() == 0  # truncated toward the clean image
    # On the integer grid and inside the budget, quantise is exact.
    grid = np.clip(clean.astype(np.int64) + rng.integers(-1, 2, size=clean.shape), 0, 255)
    if norm == "l2":
        grid[:, :, :] = clean
        grid[:, 0, 0] = np.clip(clean[:, 0, 0].astype(np.int64) + 1, 0, 255)
    out = quantise(clean, grid.astype(np.float64) / 255, AttackSpec("pgd", norm, eps, step=eps / 4))
    np.testing.assert_array_equal(out, grid.astype(np.uint8))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_agrees_with_art(trained, norm):
    art_cls = pytest.importorskip("art.estimators.classification")
    art_ev = pytest.importorskip("art.attacks.evasion")
    model, x_u8, y = trained
    eps, step = (12.0, 3.0) if norm == "linf" else (45.0, 12.0)
    spec = AttackSpec("pgd", norm, eps=eps, step=step, steps=10)
    x = as_float(x_u8)
    ours = make_attack(model, spec)(x, y).numpy()

    def loss_object(y_onehot, probs):  # the same cross-entropy, summed over the batch
        return tf.reduce_sum(cross_entropy(tf.argmax(y_onehot, axis=1), probs))

    clf = art_cls.TensorFlowV2Classifier(
        model=model,
        nb_classes=2,
        input_shape=(SIZE, SIZE, 1),
        loss_object=loss_object,
        clip_values=(0.0, 1.0),
    )
    pgd = art_ev.ProjectedGradientDescent(
        clf,
        norm=np.inf if norm == "linf" else 2,
        eps=eps / 255,
        eps_step=step / 255,
        max_iter=10,
        targeted=False,
        num_random_init=0,
        batch_size=128,
        verbose=False,
    )
    theirs = pgd.generate(x, y=np.eye(2, dtype=np.float32)[y])
    p_ours, p_theirs = predict(model, ours), predict(model, theirs)
    assert np.mean(p_ours == p_theirs) >= 0.95
    # Both actually attacked (otherwise agreement would be trivial).
    assert np.mean(p_ours != y) >= 0.3
    if norm == "linf":
        assert np.mean(np.abs(ours - theirs) < 1e-5) >= 0.95


def test_attack_lowers_accuracy(trained):
    model, x_u8, y = trained
    x = as_float(x_u8)
    clean_acc = np.mean(predict(model, x) == y)
    adv = make_attack(model, AttackSpec("pgd", eps=32, step=8, steps=10))(x, y)
    adv_acc = np.mean(predict(model, adv) == y)
    assert clean_acc >= 0.9
    assert adv_acc <= 0.2, f"PGD eps=32/255: accuracy {clean_acc:.2f} -> {adv_acc:.2f}"
    fgsm = make_attack(model, AttackSpec("fgsm", eps=32))(x, y)
    assert np.mean(predict(model, fgsm) == y) <= clean_acc - 0.3


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_keep_strongest(trained, targeted):
    model, x_u8, y = trained
    x = as_float(x_u8[:64])
    y = y[:64]
    target = 1 - y if targeted else y
    kw = dict(method="pgd", eps=2, step=0.5, steps=3, random_start=True, targeted=targeted)
    one = make_attack(model, AttackSpec(**kw, restarts=1))(x, y)
    four = make_attack(model, AttackSpec(**kw, restarts=4))(x, y)
    l1, l4 = losses(model, one, target), losses(model, four, target)
    if targeted:
        assert np.all(l4 <= l1 + 1e-5)
        assert np.any(l4 < l1 - 1e-4)
    else:
        assert np.all(l4 >= l1 - 1e-5)
        assert np.any(l4 > l1 + 1e-4)


def test_targeted_raises_opposite_class(trained):
    model, x_u8, y = trained
    x = as_float(x_u8)
    target = 1 - y
    p0 = model(x, training=False).numpy()[np.arange(len(y)), target]
    adv = make_attack(model, AttackSpec("pgd", eps=12, step=3, steps=10, targeted=True))(x, y)
    p1 = model(adv, training=False).numpy()[np.arange(len(y)), target]
    assert np.mean(p1 > p0) >= 0.95
    assert p1.mean() > p0.mean() + 0.2
    assert np.mean(predict(model, adv) == target) > np.mean(predict(model, x) == target) + 0.2


def test_run_attack_batches(trained):
    model, x_u8, y = trained
    spec = spec_from_config({"method": "pgd", "step_fraction": 0.25, "steps": 5}, 2.55)
    attack = make_attack(model, spec)
    calls = []

    class P:
        def update(self, n):
            calls.append(n)

    res = run_attack_batches(model, attack, x_u8[:50], y[:50], spec, batch_size=16, progress=P())
    assert calls == [16, 16, 16, 2]
    assert res["adv_u8"].dtype == np.uint8 and res["adv_u8"].shape == (50, SIZE, SIZE)
    for k in ("clean_prob", "adv_prob_float", "adv_prob", "l2", "linf"):
        assert res[k].shape == (50,) and res[k].dtype == np.float32
    d = res["adv_u8"].astype(np.int64) - x_u8[:50].astype(np.int64)
    assert np.abs(d).max() == 2  # floor(2.55)
    np.testing.assert_allclose(res["linf"], np.abs(d).reshape(50, -1).max(1) / 255, rtol=1e-6)
    np.testing.assert_allclose(
        res["l2"], np.linalg.norm(d.reshape(50, -1), axis=1) / 255, rtol=1e-5
    )
    p = model(as_float(res["adv_u8"]), training=False).numpy()[:, 1]
    np.testing.assert_allclose(res["adv_prob"], p, atol=1e-5)
    pc = model(as_float(x_u8[:50]), training=False).numpy()[:, 1]
    np.testing.assert_allclose(res["clean_prob"], pc, atol=1e-5)
    # The attack pushed the probability of the finding away from the true label.
    toward_wrong = np.where(y[:50] == 1, pc - res["adv_prob"], res["adv_prob"] - pc)
    assert np.mean(toward_wrong > 0) >= 0.9
    with pytest.raises(WorkflowError):
        run_attack_batches(model, attack, as_float(x_u8[:4]), y[:4], spec, batch_size=2)


def test_spec_from_config():
    s = spec_from_config({"method": "pgd", "norm": "l2", "step_fraction": 0.5, "steps": 7}, 8)
    assert (s.method, s.norm, s.eps, s.step, s.steps) == ("pgd", "l2", 8.0, 4.0, 7)
    assert spec_from_config({"method": "pgd"}, 4).step == 1.0  # default fraction 0.25
    assert spec_from_config({"method": "pgd", "step": 3}, 4).step == 3.0
    f = spec_from_config({"method": "fgsm", "steps": 10}, 4)
    assert (f.step, f.steps) == (4.0, 1)
    mi = spec_from_config({"method": "pgd", "momentum": 1.0, "diversity_prob": 0.5}, 8)
    attrs = mi.attrs()
    assert attrs["momentum"] == 1.0 and attrs["diversity_prob"] == 0.5 and attrs["steps"] == 10
    assert all(isinstance(v, str | bool | int | float) for v in attrs.values())
    assert set(attrs) >= {"method", "norm", "eps", "step", "steps", "targeted", "seed"}
    bad = [
        ({"method": "pgd"}, 0),
        ({"method": "pgd"}, -1),
        ({"method": "pgd", "step": 5, "steps": 10}, 4),
        ({"method": "cw"}, 4),
        ({"method": "pgd", "norm": "l1"}, 4),
        ({"method": "pgd", "stepz": 1}, 4),
        ({"norm": "linf"}, 4),
    ]
    for cfg, eps in bad:
        with pytest.raises(WorkflowError):
            spec_from_config(cfg, eps)
    # A single-step PGD may take a step larger than eps (it is projected).
    assert spec_from_config({"method": "pgd", "step": 5, "steps": 1}, 4).steps == 1
