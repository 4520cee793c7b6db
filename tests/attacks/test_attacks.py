"""Tests of cxrtransfer.attacks (spec, steps, iterative, budget, batches) on small real Keras
CNNs trained on a synthetic pattern."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cxrtransfer import WorkflowError  # noqa: E402
from cxrtransfer.attacks.batches import run_attack_batches  # noqa: E402
from cxrtransfer.attacks.budget import l2_budget_sq, quantise, within_budget  # noqa: E402
from cxrtransfer.attacks.iterative import make_attack  # noqa: E402
from cxrtransfer.attacks.spec import (  # noqa: E402
    AttackSpec,
    spec_from_config,
    stream_seed,
    ti_kernel_weights,
)
from cxrtransfer.attacks.steps import (  # noqa: E402
    attack_draws,
    clip_eta,
    cross_entropy,
    diverse_input,
    momentum_update,
    optimize_linear,
    random_lp_vector,
    smooth_gradient,
)
from cxrtransfer.models.inference import make_predict_fn  # noqa: E402

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
    "l2": dict(method="pgd", norm="l2", eps=0.25, step=0.0625, steps=5),
    "l2_targeted_rs_restarts": dict(
        method="pgd", norm="l2", eps=0.25, step=0.0625, steps=3, targeted=True,
        random_start=True, restarts=2,
    ),
    "mi_di": dict(method="pgd", eps=8, step=2, steps=5, momentum=1.0, diversity_prob=0.5,
                  diversity_scale=1.3, random_start=True),
    "l2_mi_di": dict(method="pgd", norm="l2", eps=0.25, step=0.0625, steps=5, momentum=1.0,
                     diversity_prob=1.0),
    "fgsm": dict(method="fgsm", eps=8),
    "ti": dict(method="pgd", eps=8, step=2, steps=5, ti_kernel=5),
    "si_ni": dict(method="pgd", eps=8, step=2, steps=4, momentum=1.0, nesterov=True, scales=3),
    "vmi": dict(method="pgd", eps=8, step=2, steps=4, momentum=1.0, variance_samples=4,
                variance_bound=1.5),
    "l2_vmi_si_ti_di": dict(method="pgd", norm="l2", eps=0.25, step=0.0625, steps=3,
                            momentum=1.0, variance_samples=2, scales=2, ti_kernel=5,
                            diversity_prob=0.5, random_start=True, restarts=2),
    "fgsm_ti_si": dict(method="fgsm", eps=8, ti_kernel=5, scales=2),
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
        assert np.linalg.norm(d, axis=1).max() <= spec.eps * (1 + 1e-5)
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


def test_cross_entropy_value_and_gradient_are_finite_from_certain_to_hopeless():
    # logits from a confident right answer (p_y rounds to 1) to p_y ~ 1e-35 (NI-FGSM's
    # look-ahead reached p_y ~ 3e-20, where the ratio's gradient overflowed into NaN)
    z = tf.constant([[-30.0, 30.0], [0.0, 2.0], [0.0, 0.0], [3.0, 0.0], [45.0, 0.0], [80.0, 0.0]])
    y = tf.constant([1, 1, 1, 1, 1, 1])
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = cross_entropy(y, tf.nn.softmax(z))
    grad = tape.gradient(loss, z).numpy()
    assert np.isfinite(grad).all() and np.isfinite(loss.numpy()).all()
    exact = -tf.nn.log_softmax(z)[:, 1].numpy()
    np.testing.assert_allclose(loss.numpy()[1:5], exact[1:5], rtol=1e-5)
    assert grad[0, 1] < 0  # the gradient survives p_y rounding to 1 (the value is 0 there)
    assert loss.numpy()[5] >= 60  # p_y underflows: bounded by the 1e-30 floor, still large


def test_quantise_refuses_non_finite_attack_output():
    clean = np.full((3, 4, 4), 100, np.uint8)
    adv = clean[..., None].astype(np.float32) / 255.0
    adv[1, 0, 0, 0] = np.nan  # would otherwise round to an in-budget grey level
    with pytest.raises(WorkflowError, match="non-finite pixels for 1 of 3 images"):
        quantise(clean, adv, AttackSpec("pgd", "linf", 8, step=2, steps=4))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [8.0, 2.55, 1.0])  # grey levels (1/255 units)
def test_quantise_integer_bound(norm, eps):
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 256, size=(20, 12, 12)).astype(np.uint8)
    clean[0] = 0
    clean[1] = 255
    clean[3] = 128
    c = clean.astype(np.float64) / 255
    # linf eps in 1/255 units; l2 eps in [0, 1] pixel units (the same ball radius here)
    budget = eps if norm == "linf" else eps / 255
    spec = AttackSpec("pgd", norm, budget, step=budget)
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
        out = quantise(clean if a.ndim == 3 else clean[..., None], a, spec)
        assert out.dtype == np.uint8 and out.shape == clean.shape
        q = out.astype(np.int64) - clean.astype(np.int64)
        assert within_budget(clean, out, spec).all()
        if norm == "linf":
            assert np.abs(q).max() <= np.floor(eps)
            if eps >= 1:
                assert np.abs(q).max() == np.floor(eps)  # not trivially the clean image
        else:
            sq = np.sum(q.reshape(20, -1) ** 2, axis=1)
            assert sq.max() <= round(eps**2, 6)  # integer check, in grey levels
            assert np.linalg.norm(q.reshape(20, -1), axis=1).max() / 255 <= spec.eps + 1e-12
            r = round(0.99 * eps)  # nearest if inside the budget, else one level less
            assert q[3, 4, 4] == (r if r <= eps else np.floor(0.99 * eps))
            # 20 pixels at +1: as many kept as the budget allows (not truncated to nothing)
            ones = np.sum(clean[2, :5, :4] < 255)  # those at 255 stay (clipped)
            assert sq[2] == min(ones, np.floor(eps**2 + 1e-6)) and q[2].min() >= 0
    # On the integer grid and inside the budget, quantise is exact.
    grid = np.clip(clean.astype(np.int64) + rng.integers(-1, 2, size=clean.shape), 0, 255)
    if norm == "l2":
        grid[:, :, :] = clean
        grid[:, 0, 0] = np.clip(clean[:, 0, 0].astype(np.int64) + 1, 0, 255)
    out = quantise(clean, grid.astype(np.float64) / 255, spec)
    np.testing.assert_array_equal(out, grid.astype(np.uint8))


@pytest.mark.parametrize("eps", [0.2, 0.5, 1.0])  # per-pixel RMS 0.8 to 4 grey levels
def test_quantise_l2_stays_close_to_float(eps):
    """Rounding + greedy shrinking lands near the float perturbation (at the ball's surface, as
    PGD leaves it): within 1.2x the plain rounding error (truncating toward the clean image, as
    before, is ~1.8x) and keeping > 95% of its length along it."""
    rng = np.random.default_rng(5)
    n, size = 16, 16
    clean = rng.integers(20, 236, size=(n, size, size)).astype(np.uint8)
    v = rng.normal(size=(n, size, size))
    v *= eps / np.linalg.norm(v.reshape(n, -1), axis=1)[:, None, None]
    adv = np.clip(clean / 255.0 + v, 0.0, 1.0)
    spec = AttackSpec("pgd", "l2", eps, step=eps / 4)
    out = quantise(clean, adv, spec)
    assert within_budget(clean, out, spec).all()
    q = (out.astype(np.float64) - clean).reshape(n, -1) / 255
    vv = (adv - clean / 255.0).reshape(n, -1)  # the float perturbation, after clipping
    err = np.linalg.norm(q - vv, axis=1)
    rounding = np.linalg.norm(np.rint(vv * 255) / 255 - vv, axis=1)
    assert np.all(err <= 1.2 * rounding + 1e-12)
    assert np.all(np.sum(q * vv, axis=1) / np.sum(vv * vv, axis=1) >= 0.95)
    assert np.all(np.linalg.norm(q, axis=1) <= eps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_agrees_with_art(trained, norm):
    art_cls = pytest.importorskip("art.estimators.classification")
    art_ev = pytest.importorskip("art.attacks.evasion")
    model, x_u8, y = trained
    eps, step = (12.0, 3.0) if norm == "linf" else (0.18, 0.05)
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
        eps=spec.eps_float,
        eps_step=spec.step_float,
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


# --- random streams --------------------------------------------------------------------


def test_stream_seed_is_a_pure_hash():
    s = stream_seed(0, "src", "task", 3, 7)
    assert s == stream_seed(0, "src", "task", 3, 7)
    assert all(isinstance(v, int) and -(2**63) <= v < 2**63 for v in s)
    others = {
        stream_seed(1, "src", "task", 3, 7),
        stream_seed(0, "src2", "task", 3, 7),
        stream_seed(0, "src", "task2", 3, 7),
        stream_seed(0, "src", "task", 4, 7),
        stream_seed(0, "src", "task", 3, 8),
        stream_seed(0, "src", "task", 37),  # no ambiguity from concatenation
        stream_seed(0, "src", "task", "3", 7),
    }
    assert s not in others and len(others) == 7
    assert stream_seed(0, np.int64(3)) == stream_seed(0, 3)
    # A spec's streams include its configuration (e.g. eps) but not the number of restarts.
    a = AttackSpec("pgd", eps=8, step=2, random_start=True)
    assert a.stream_seed("s", 0) != AttackSpec("pgd", eps=4, step=2).stream_seed("s", 0)
    assert a.stream_seed("s", 0) != AttackSpec("pgd", eps=8, step=2, seed=1).stream_seed("s", 0)
    assert a.stream_seed("s", 0) == AttackSpec(
        "pgd", eps=8, step=2, random_start=True, restarts=3
    ).stream_seed("s", 0)
    with pytest.raises(WorkflowError):
        stream_seed(0, object())


def test_attack_seed_input(trained):
    model, x_u8, y = trained
    spec = AttackSpec("pgd", "l2", eps=0.5, step=0.125, steps=2, random_start=True,
                      diversity_prob=0.5, diversity_scale=1.3)  # fmt: skip
    attack = make_attack(model, spec)
    x = as_float(x_u8[:8])
    a = attack(x, y[:8], stream_seed(0, "a")).numpy()
    np.testing.assert_array_equal(attack(x, y[:8], stream_seed(0, "a")).numpy(), a)
    b = attack(x, y[:8], stream_seed(0, "b")).numpy()
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(attack(x, y[:8]).numpy(), attack(x, y[:8], spec.stream_seed()))
    assert attack.graph.experimental_get_tracing_count() == 1  # the seed is an input


def _start_spec():
    # One tiny step: the output is dominated by the random start.
    return AttackSpec("pgd", eps=8, step=0.5, steps=1, random_start=True)


def test_run_attack_batches_streams(trained):
    model, x_u8, y = trained
    spec = _start_spec()
    attack = make_attack(model, spec)
    x2 = np.concatenate([x_u8[:16], x_u8[:16]])  # two batches of the same images
    y2 = np.concatenate([y[:16], y[:16]])

    def run(stream):
        return run_attack_batches(model, attack, x2, y2, spec, 16, stream=stream)["adv_u8"]

    base = run(("src", "own", 0))
    np.testing.assert_array_equal(run(("src", "own", 0)), base)  # reproducible
    same = np.mean(base[:16] == base[16:])
    assert same < 0.5, f"batches 0 and 1 share random starts ({same:.2f} equal pixels)"
    for other in (("src", "own", 1), ("src2", "own", 0), ("src", "cardiomegaly", 0)):
        assert np.mean(run(other) == base) < 0.5, other
    # Another eps draws another stream too (not just the same start rescaled).
    spec4 = AttackSpec("pgd", eps=4, step=0.5, steps=1, random_start=True)
    adv4 = run_attack_batches(
        model, make_attack(model, spec4), x2, y2, spec4, 16, stream=("src", "own", 0)
    )["adv_u8"]
    d8 = np.sign(base.astype(int) - x2)
    d4 = np.sign(adv4.astype(int) - x2)
    assert np.mean(d8 == d4) < 0.7
    with pytest.raises(WorkflowError):  # attack built for another spec
        run_attack_batches(model, attack, x2, y2, spec4, 16)


def test_restart_streams_differ():
    spec = AttackSpec("pgd", "linf", eps=8, step=2, random_start=True, restarts=3)
    d = random_lp_vector([3, 4, SIZE, SIZE, 1], "linf", spec.eps_float, spec.stream_seed(0))
    d = d.numpy()
    assert not np.allclose(d[0], d[1]) and not np.allclose(d[1], d[2])


# --- L2 units and storage ----------------------------------------------------------------


def test_l2_stored_attack_keeps_its_effect(trained):
    """L2 PGD at eps 0.2 ([0, 1] units, per-pixel RMS 3.2/255 on 16x16): the stored uint8
    examples fool the source about as often as the float ones, inside the exact budget."""
    model, x_u8, y = trained
    spec = spec_from_config({"method": "pgd", "norm": "l2", "steps": 10}, 0.2)
    assert spec.step == pytest.approx(0.05)  # step_fraction 0.25 in the same L2 units
    r = run_attack_batches(model, make_attack(model, spec), x_u8, y, spec, 64, stream=("t",))
    assert within_budget(x_u8, r["adv_u8"], spec).all()
    assert r["l2"].max() <= 0.2 + 1e-6 and r["l2"].max() >= 0.19  # uses the budget
    ok = (r["clean_prob"] >= 0.5) == y
    float_success = np.mean(((r["adv_prob_float"] >= 0.5) != y)[ok])
    stored_success = np.mean(((r["adv_prob"] >= 0.5) != y)[ok])
    assert float_success > 0.5, f"float L2 attack too weak to test ({float_success:.2f})"
    assert stored_success >= 0.9 * float_success, (float_success, stored_success)


def test_units_in_attrs_and_errors():
    linf = spec_from_config({"method": "pgd", "step_fraction": 0.5}, 8)
    l2 = spec_from_config({"method": "pgd", "norm": "l2", "step_fraction": 0.5}, 1.0)
    assert linf.attrs()["eps_unit"] == "1/255" and l2.attrs()["eps_unit"] == "L2, [0,1] pixels"
    assert (linf.eps_float, linf.step_float) == (8 / 255, 4 / 255)
    assert (l2.eps_float, l2.step_float) == (1.0, 0.5)
    f = spec_from_config({"method": "fgsm", "norm": "l2"}, 0.5)
    assert (f.step_size, f.step_float, f.attrs()["step"]) == (0.5, 0.5, 0.5)
    with pytest.raises(WorkflowError, match=r"L2, \[0,1\] pixels"):
        spec_from_config({"method": "pgd", "norm": "l2", "step": 2, "steps": 5}, 1.0)
    with pytest.raises(WorkflowError, match="1/255"):
        spec_from_config({"method": "pgd", "step": 9, "steps": 5}, 8)


def test_within_budget_is_exact():
    clean = np.full((3, 4, 4), 100, np.uint8)
    adv = clean.copy()
    adv[0, 0, :3] = 101  # norm sqrt(3) grey levels
    adv[1, 0, 0] = 102  # norm 2
    adv[2, 0, :2] = 99  # norm sqrt(2)
    l2 = AttackSpec("pgd", "l2", eps=2 / 255, step=0.001)
    np.testing.assert_array_equal(within_budget(clean, adv, l2), [True, True, True])
    l2 = AttackSpec("pgd", "l2", eps=1.9 / 255, step=0.001)
    np.testing.assert_array_equal(within_budget(clean, adv, l2), [True, False, True])
    linf = AttackSpec("pgd", "linf", eps=1, step=1)
    np.testing.assert_array_equal(within_budget(clean, adv, linf), [True, False, True])
    assert l2_budget_sq(2 / 255) == 4 and l2_budget_sq(1.0) == 255**2
    assert l2_budget_sq(0.5) == 16256  # 127.5^2 = 16256.25


# --- building blocks -----------------------------------------------------------------------


def test_clip_eta():
    rng = np.random.default_rng(0)
    eta = tf.constant(rng.normal(size=(2, 3, 4, 4, 1)).astype(np.float32))  # leading axes ok
    out = clip_eta(eta, "linf", 0.5).numpy()
    np.testing.assert_array_equal(out, np.clip(eta.numpy(), -0.5, 0.5))
    n = np.linalg.norm(eta.numpy().reshape(6, -1), axis=1)
    eps = float(np.median(n))
    out = clip_eta(eta, "l2", eps).numpy().reshape(6, -1)
    on = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(on, np.minimum(n, eps), rtol=1e-5)
    inside = n <= eps
    np.testing.assert_array_equal(out[inside], eta.numpy().reshape(6, -1)[inside])
    np.testing.assert_array_equal(clip_eta(tf.zeros((1, 4, 4, 1)), "l2", 1.0).numpy(), 0)


def test_optimize_linear():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
    g[2] = 0
    np.testing.assert_array_equal(optimize_linear(tf.constant(g), "linf").numpy(), np.sign(g))
    d = optimize_linear(tf.constant(g), "l2").numpy().reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(d[:2], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(d[:2], g[:2].reshape(2, -1) / np.linalg.norm(
        g[:2].reshape(2, -1), axis=1, keepdims=True), rtol=1e-5)  # fmt: skip
    assert np.all(d[2] == 0)  # zero gradient: no step, no NaN


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_lp_vector(norm):
    eps = 0.1 if norm == "linf" else 1.0
    shape = [2, 500, 4, 4, 1]
    a = random_lp_vector(shape, norm, eps, (1, 2)).numpy()
    assert a.shape == tuple(shape)
    np.testing.assert_array_equal(random_lp_vector(shape, norm, eps, (1, 2)).numpy(), a)
    assert not np.allclose(random_lp_vector(shape, norm, eps, (1, 3)).numpy(), a)
    if norm == "linf":
        assert np.abs(a).max() <= eps and np.abs(a).max() > 0.99 * eps
        assert abs(a.mean()) < 0.01 * eps
    else:
        r = np.linalg.norm(a.reshape(1000, -1), axis=1)
        assert r.max() <= eps * (1 + 1e-6)
        # uniform in the 16-dimensional ball: P(r <= t eps) = t^16
        assert abs(np.mean(r <= 0.9 * eps) - 0.9**16) < 0.05


def test_momentum_update():
    g = tf.ones((1, 2, 2, 1))
    grad = tf.constant([[[[2.0], [-2.0]], [[4.0], [0.0]]]])
    out = momentum_update(g, grad, 0.5).numpy()
    np.testing.assert_allclose(out, 0.5 + grad.numpy() / 2.0)


def test_predict_fn_uint8_and_float(trained):
    model, x_u8, _ = trained
    ref = model(as_float(x_u8[:10]), training=False).numpy()[:, 1]
    pu = make_predict_fn(model)
    np.testing.assert_allclose(pu(x_u8[:10]).numpy(), ref, atol=1e-6)
    pf = make_predict_fn(model, input_dtype="float32")
    out = pf(as_float(x_u8[:10])).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    pf(as_float(x_u8[:3]))
    assert pf.experimental_get_tracing_count() == 1
    with pytest.raises(WorkflowError):
        make_predict_fn(model, input_dtype="float16")


# --- transfer attacks: TI-FGSM, SI-NI-FGSM, VMI-FGSM --------------------------------------


def gkern(kernlen: int, nsig: float = 3.0) -> np.ndarray:
    """TI-FGSM's kernel as in the authors' code (Dong et al. 2019)."""
    st = pytest.importorskip("scipy.stats")
    kern1d = st.norm.pdf(np.linspace(-nsig, nsig, kernlen))
    kernel_raw = np.outer(kern1d, kern1d)
    return kernel_raw / kernel_raw.sum()


def reference_attack(model, x, y, spec: AttackSpec, seed) -> np.ndarray:
    """The attack written from the papers' algorithms in NumPy + eager TensorFlow gradients,
    one image batch, one run. Random numbers: the same draws as ``make_attack``
    (``attack_draws``; VMI neighbours ``random_lp_vector`` of the per-sample seeds).

    NI-FGSM (Lin et al. 2020, Alg. 1): x_nes = x_t + alpha mu g_t; SI-FGSM (their eq. 6):
    g = 1/m sum_i grad_x J(S_i(x)), S_i(x) = x / 2^i; VMI-FGSM (Wang and He 2021, Alg. 1):
    g_{t+1} = mu g_t + (g' + v_t) / ||g' + v_t||_1, v_{t+1} = 1/N sum_j g'(x + r_j) - g'(x),
    r_j ~ U[-(beta eps), beta eps]^d; TI-FGSM (Dong et al. 2019, MI-TI): the gradient is
    convolved with gkern before the momentum normalisation. L1 norms as mean |.| per image
    (the authors' code; the sign / L2 direction is the same).
    """
    signal = pytest.importorskip("scipy.signal")
    assert spec.runs == 1, "the reference runs one restart"
    x = np.asarray(x, np.float32)
    eps, mu, m, nv = spec.eps_float, spec.momentum, spec.scales, spec.variance_samples
    ascent = -spec.step_float if spec.targeted else spec.step_float
    target = (1 - y if spec.targeted else y).astype(np.int32)
    d0, u, vseeds = attack_draws(spec, np.asarray(seed, np.int64), x.shape)
    d0, u = d0.numpy()[0], u.numpy()[0]
    kern = gkern(spec.ti_kernel) if spec.ti_kernel > 1 else None

    def per_image(a, fn):
        return fn(a.reshape(len(a), -1), axis=1).reshape(-1, 1, 1, 1)

    def project(adv):  # onto the eps ball around x, then [0, 1]
        d = adv - x
        if spec.norm == "linf":
            d = np.clip(d, -eps, eps)
        else:
            n = per_image(d, np.linalg.norm)
            d = d * np.minimum(1.0, np.divide(eps, n, out=np.ones_like(n), where=n > 0))
        return np.clip(x + d, 0.0, 1.0)

    def loss_grad(z, uu):  # d/dz sum J(DI(z)) at the batch z
        z = tf.constant(z, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(z)
            zz = z
            if spec.diversity_prob > 0:
                zz = diverse_input(z, tf.constant(uu), spec.diversity_prob, spec.diversity_scale)
            loss = tf.reduce_sum(cross_entropy(target, model(zz, training=False)))
        return tape.gradient(loss, z).numpy()

    def si_grad(z, us):  # 1/m sum_i d/dz J(z / 2^i) = 1/m sum_i 2^-i J'(z / 2^i)
        return sum(loss_grad(z / 2**i, us[i]) / 2**i for i in range(m)) / m

    x_adv = project(x + d0) if spec.random_start else x.copy()
    g = np.zeros_like(x)
    v = np.zeros_like(x)
    for t in range(spec.iterations):
        us = u[t]
        p = x_adv + ascent * mu * g if spec.nesterov else x_adv
        grad = si_grad(p, us[:m])
        if nv:
            around = []
            for j in range(nv):
                r = random_lp_vector(x.shape, spec.norm, spec.variance_bound * eps, vseeds[0, t, j])
                around.append(si_grad(p + r.numpy(), us[m * (1 + j) : m * (2 + j)]))
            grad, v = grad + v, np.mean(around, axis=0) - grad
        if kern is not None:
            grad = np.stack(
                [signal.convolve2d(gi[..., 0], kern, mode="same")[..., None] for gi in grad]
            )
        if mu > 0:
            l1 = per_image(np.abs(grad), np.mean)
            g = mu * g + np.divide(grad, l1, out=np.zeros_like(grad), where=l1 > 0)
            grad = g
        if spec.norm == "linf":
            direction = np.sign(grad)
        else:
            n = per_image(grad, np.linalg.norm)
            direction = np.divide(grad, n, out=np.zeros_like(grad), where=n > 0)
        x_adv = project(x_adv + ascent * direction)
    return x_adv


REFERENCE_SPECS = {
    "pgd": dict(),
    "mi_di": dict(momentum=1.0, diversity_prob=0.7, diversity_scale=1.3),
    "ti": dict(ti_kernel=5),
    "mi_ti": dict(momentum=1.0, ti_kernel=7),
    "si": dict(scales=5),
    "si_ni": dict(momentum=1.0, nesterov=True, scales=3),
    "si_ni_ti_di": dict(momentum=1.0, nesterov=True, scales=2, ti_kernel=5, diversity_prob=0.7,
                        diversity_scale=1.3),
    "vmi": dict(momentum=1.0, variance_samples=3, variance_bound=1.5),
    "vmi_l2": dict(norm="l2", eps=0.3, step=0.075, momentum=1.0, variance_samples=3),
    "vni_si_ti_di_targeted_rs": dict(momentum=1.0, nesterov=True, variance_samples=2, scales=2,
                                     ti_kernel=5, diversity_prob=0.7, targeted=True,
                                     random_start=True),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE_SPECS))
def test_transfer_attacks_match_the_reference(trained, name):
    model, x_u8, y = trained
    kw = dict(method="pgd", norm="linf", eps=8, step=2, steps=4)
    kw.update(REFERENCE_SPECS[name])
    spec = AttackSpec(**kw)
    x, yy = as_float(x_u8[:16]), y[:16]
    seed = stream_seed(0, "reference", name)
    ours = make_attack(model, spec)(x, yy, seed).numpy()
    ref = reference_attack(model, x, yy, spec, seed)
    assert np.abs(ours - x).max() > 0.5 / 255, "the attack did not perturb anything"
    close = np.abs(ours - ref) <= 1e-6
    assert close.mean() >= 0.99, f"{name}: {1 - close.mean():.2%} of the pixels differ"
    # Each transfer setting changes the result (it is not silently ignored).
    off = dict(ti_kernel=0, scales=1, nesterov=False, variance_samples=0)
    for key in ("ti_kernel", "scales", "nesterov", "variance_samples"):
        if kw.get(key, off[key]) != off[key]:
            other = AttackSpec(**{**kw, key: off[key]})
            changed = np.abs(make_attack(model, other)(x, yy, seed).numpy() - ours) > 1e-6
            assert changed.mean() > 0.02, f"{name}: {key} has no effect"


def test_ti_kernel_is_the_authors_gkern():
    for k in (3, 7, 15):
        w = ti_kernel_weights(k)
        assert w.shape == (k, k) and w.dtype == np.float32
        np.testing.assert_allclose(w, gkern(k), rtol=1e-6, atol=1e-9)
        assert abs(float(w.sum()) - 1.0) < 1e-6
        np.testing.assert_array_equal(w, w.T)
        assert w[k // 2, k // 2] == w.max() and w[0, 0] == w.min()
    np.testing.assert_array_equal(ti_kernel_weights(1), [[1.0]])
    for bad in (0, 4, -3):
        with pytest.raises(WorkflowError, match="ti_kernel"):
            ti_kernel_weights(bad)


def test_a_ti_kernel_that_does_not_smooth_is_refused():
    # size 3 (nsig 3) keeps 0.957 of the weight on the centre: TI-FGSM would be the plain attack
    with pytest.raises(WorkflowError, match=r"ti_kernel 3 does not smooth.*0\.957"):
        AttackSpec(method="pgd", eps=8, step=2, steps=5, ti_kernel=3)
    for k in (5, 7, 15):  # accepted, and each smooths: many gradient signs change
        AttackSpec(method="pgd", eps=8, step=2, steps=5, ti_kernel=k)
        assert float(ti_kernel_weights(k).max()) <= 0.5
    g = np.random.default_rng(1).normal(size=(2, 48, 48, 1)).astype(np.float32)
    flipped = np.sign(smooth_gradient(tf.constant(g), ti_kernel_weights(5)).numpy()) != np.sign(g)
    assert flipped.mean() > 0.1


def test_the_demo_ti_kernel_smooths_at_the_demo_image_size():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    kernels = {a["ti_kernel"] for a in cfg["attacks"].values() if a.get("ti_kernel", 0) > 1}
    assert kernels, "the demo has a TI attack"
    for k in kernels:
        assert k <= cfg["data"]["image_size"] and float(ti_kernel_weights(k).max()) <= 0.5


def test_smooth_gradient_is_a_zero_padded_convolution():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 12, 10, 1)).astype(np.float32)
    w = ti_kernel_weights(5)
    out = smooth_gradient(tf.constant(g), w).numpy()
    ref = np.stack([signal.convolve2d(gi[..., 0], gkern(5), mode="same")[..., None] for gi in g])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.abs(out - g).max() > 0.1
    # kernel 1 is the identity (TI with kernel 1 == no TI)
    np.testing.assert_array_equal(smooth_gradient(tf.constant(g), ti_kernel_weights(1)).numpy(), g)


# Existing attacks and the same attacks with every new setting at an "off" value.
OFF_VALUES = [
    dict(ti_kernel=1),
    dict(ti_kernel=0, scales=1, nesterov=False, variance_samples=0, variance_bound=3.0),
]


@pytest.mark.parametrize("name", ["linf", "mi_di", "l2_targeted_rs_restarts", "fgsm"])
def test_off_values_reduce_to_the_existing_attack(trained, name):
    model, x_u8, y = trained
    x = as_float(x_u8[:16])
    base = AttackSpec(**SPECS[name])
    seed = stream_seed(0, "off")
    ref = make_attack(model, base)(x, y[:16], seed).numpy()
    for off in OFF_VALUES:
        spec = AttackSpec(**SPECS[name], **off)
        assert spec.stream_seed("s", 1) == base.stream_seed("s", 1)
        np.testing.assert_array_equal(make_attack(model, spec)(x, y[:16], seed).numpy(), ref)


# The attributes an AttackSpec had before the transfer settings were added: the random streams
# of attacks without them must be those of that configuration dict.
OLD_STREAM_KEYS = (
    "method norm eps eps_unit step steps targeted random_start momentum diversity_prob "
    "diversity_scale"
).split()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_streams_of_existing_attacks_are_unchanged(name):
    import json

    kw = SPECS[name]
    spec = AttackSpec(**kw)
    if any(k in kw for k in ("ti_kernel", "scales", "nesterov", "variance_samples")):
        # a transfer attack: its streams depend on the new settings
        plain = {k: v for k, v in kw.items() if k not in ("ti_kernel", "scales", "nesterov",
                                                           "variance_samples", "variance_bound")}  # fmt: skip
        assert spec.stream_seed("s", 0) != AttackSpec(**plain).stream_seed("s", 0)
        return
    old_cfg = {k: spec.attrs()[k] for k in OLD_STREAM_KEYS}
    want = stream_seed(spec.seed, json.dumps(old_cfg, sort_keys=True), "src", "own", 2, 5)
    assert spec.stream_seed("src", "own", 2, 5) == want


def test_new_settings_change_the_streams_only_when_on():
    base = AttackSpec("pgd", eps=8, step=2, momentum=1.0)
    on = [
        dict(ti_kernel=5),
        dict(scales=2),
        dict(nesterov=True),
        dict(variance_samples=5),
        dict(variance_samples=5, variance_bound=2.0),
    ]
    seeds = {AttackSpec(**{**base.__dict__, **kw}).stream_seed("s") for kw in on}
    assert len(seeds) == len(on) and base.stream_seed("s") not in seeds
    # variance_bound only matters with variance samples; ti_kernel 0 and 1 are both off
    assert AttackSpec(**{**base.__dict__, "variance_bound": 2.0}).stream_seed("s") == (
        base.stream_seed("s")
    )
    assert AttackSpec(**{**base.__dict__, "ti_kernel": 1}).stream_seed("s") == (
        base.stream_seed("s")
    )
    attrs = AttackSpec(**{**base.__dict__, "ti_kernel": 7, "scales": 5}).attrs()
    assert (attrs["ti_kernel"], attrs["scales"], attrs["nesterov"]) == (7, 5, False)
    assert (attrs["variance_samples"], attrs["variance_bound"]) == (0, 1.5)


def test_draws_of_existing_attacks_are_unchanged():
    """attack_draws gives an attack without the new settings the numbers the attack drew before:
    random starts from stateless_split(seed, 2)[0], DI uniforms (runs, steps, 4) from [1]."""
    seed = tf.constant(stream_seed(0, "draws"), tf.int64)
    spec = AttackSpec(**SPECS["mi_di"], restarts=3)
    d0, u, _ = attack_draws(spec, seed, tf.constant([4, SIZE, SIZE, 1]))
    s_start, s_di = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    want_u = tf.random.stateless_uniform([3, spec.steps, 4], s_di, alg="philox")
    np.testing.assert_array_equal(u.numpy()[:, :, 0, :], want_u.numpy())
    want_d0 = random_lp_vector([3, 4, SIZE, SIZE, 1], "linf", spec.eps_float, s_start)
    np.testing.assert_array_equal(d0.numpy(), want_d0.numpy())
    # With SI and VMI: one DI transform per gradient (scales * (1 + samples) per step).
    vmi = AttackSpec(**SPECS["l2_vmi_si_ti_di"])
    d0, u, vs = attack_draws(vmi, seed, tf.constant([4, SIZE, SIZE, 1]))
    assert u.shape == (2, 3, 2 * (1 + 2), 4) and vs.shape == (2, 3, 2, 2)
    assert vs.dtype == tf.int32 and len(np.unique(vs.numpy().reshape(-1, 2), axis=0)) == 12


def test_vmi_is_a_pure_function_of_the_seed_and_agrees_with_xla(trained):
    model, x_u8, y = trained
    spec = AttackSpec(**SPECS["vmi"], diversity_prob=0.5, scales=2)
    x = as_float(x_u8[:16])
    attack = make_attack(model, spec)
    a = attack(x, y[:16], stream_seed(0, "a")).numpy()
    np.testing.assert_array_equal(attack(x, y[:16], stream_seed(0, "a")).numpy(), a)
    b = attack(x, y[:16], stream_seed(0, "b")).numpy()
    assert np.mean(np.abs(a - b) > 1e-6) > 0.02  # the neighbours come from the seed
    assert attack.graph.experimental_get_tracing_count() == 1
    xla = make_attack(model, spec, jit_compile=True)(x, y[:16], stream_seed(0, "a")).numpy()
    assert np.abs(xla - x).max() <= spec.eps_float + 1e-6
    assert np.mean(np.abs(xla - a) < 1e-5) >= 0.99  # same neighbours inside the XLA cluster


def test_ti_smooths_the_perturbation(trained):
    model, x_u8, y = trained
    x = as_float(x_u8[:32])
    kw = dict(method="pgd", eps=8, step=2, steps=5)

    def roughness(spec):  # mean |difference of neighbouring pixels| per unit of mean |d|
        d = make_attack(model, AttackSpec(**kw, **spec))(x, y[:32]).numpy() - x
        diffs = np.mean(np.abs(np.diff(d, axis=1))) + np.mean(np.abs(np.diff(d, axis=2)))
        return diffs / np.mean(np.abs(d))

    # measured 1.94 (PGD) and 0.57 (TI, kernel 7) on this model
    assert roughness(dict(ti_kernel=7)) < 0.5 * roughness({})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ti_kernel=4), "ti_kernel"),
        (dict(ti_kernel=-1), "ti_kernel"),
        (dict(scales=0), "scales"),
        (dict(scales=17), "scales"),
        (dict(nesterov=True), "nesterov.*momentum"),
        (dict(nesterov=True, momentum=1.0, norm="l2", eps=1.0, step=0.25), "nesterov.*linf"),
        (dict(variance_samples=-1), "variance_samples"),
        (dict(variance_bound=0.0), "variance_bound"),
        (dict(variance_bound=-1.5, variance_samples=5), "variance_bound"),
        (dict(variance_samples=5, method="fgsm"), "variance_samples needs method: pgd"),
    ],
)
def test_transfer_settings_are_validated(kw, match):
    with pytest.raises(WorkflowError, match=match):
        AttackSpec(**{"method": "pgd", "eps": 8, "step": 2, **kw})


def test_transfer_settings_from_config():
    cfg = {"method": "pgd", "momentum": 1.0, "nesterov": True, "scales": 5, "ti_kernel": 7,
           "variance_samples": 20, "variance_bound": 1.5}  # fmt: skip
    s = spec_from_config(cfg, 16)
    assert (s.ti_kernel, s.scales, s.nesterov, s.variance_samples) == (7, 5, True, 20)
    assert s.variance_bound == 1.5 and s.gradients_per_step == 5 * 21
    assert spec_from_config({"method": "pgd"}, 8) == AttackSpec("pgd", eps=8, step=2)
    with pytest.raises(WorkflowError, match="ti_kernel"):
        spec_from_config({"method": "pgd", "ti_kernel": 6}, 8)


def test_ti_kernel_larger_than_the_model_input_is_refused(trained):
    model = trained[0]
    with pytest.raises(WorkflowError, match="ti_kernel 17 is larger"):
        make_attack(model, AttackSpec("pgd", eps=8, step=2, ti_kernel=17))
