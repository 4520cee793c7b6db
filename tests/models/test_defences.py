"""Input-transform defences: the transforms against reference implementations (Pillow's JPEG
encoder, integer arithmetic, SciPy's median filter), BPDA's and EOT's gradients, the defended
checkpoint, the config checks, the relation and the report section."""

import copy
import io
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from cxrtransfer import WorkflowError
from cxrtransfer.evaluate.relations import factors, relation
from cxrtransfer.evaluate.summary import summary_markdown
from cxrtransfer.evaluate.summary_sections import defence_lines, hardened_models, robust_lines
from cxrtransfer.models import layers as D
from cxrtransfer.plan import checks
from cxrtransfer.plan import study as plan
from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
from snakemake.utils import validate


@pytest.fixture(scope="module")
def images():
    """Smooth-ish 8-bit grey images (N, 32, 32, 1), like downsampled radiographs."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 32, 32, 1)).astype(float)
    return ndimage.uniform_filter(raw, size=(1, 5, 5, 1)).round().astype(np.uint8)


def _tf(u8):
    import tensorflow as tf

    return tf.constant(u8.astype(np.float32) / 255.0)


@pytest.mark.parametrize("quality", [10, 50, 75, 95])
def test_jpeg_matches_pillow(images, quality):
    from PIL import Image

    ours = np.round(D.jpeg(_tf(images), quality).numpy() * 255).astype(int)
    ref = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im[:, :, 0], "L").save(buf, "JPEG", quality=quality)
        ref.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())))[:, :, None])
    ref = np.stack(ref).astype(int)
    assert np.abs(ours - images.astype(int)).max() > 0  # it changed the images
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("bits", range(1, 8))
def test_bit_depth_matches_integer_arithmetic(bits):
    grey = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    levels = 2**bits - 1
    out = D.bit_depth(_tf(grey), bits).numpy() * levels
    # round(p * L / 255) in integers (no ties: 2 p L is never an odd multiple of 255)
    ref = (2 * grey.astype(int) * levels + 255) // 510
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert len(np.unique(ref)) == levels + 1


@pytest.mark.parametrize("size", [3, 5])
def test_median_filter_matches_scipy(images, size):
    from scipy import ndimage

    ours = np.round(D.median_filter(_tf(images), size).numpy() * 255)
    ref = ndimage.median_filter(images, size=(1, size, size, 1), mode="reflect")
    np.testing.assert_array_equal(ours, ref)


def _tiny_model(seed=0, size=32):
    """A small model of the contract (pixels in, 2-class softmax out)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, out)


def _input_gradient(model, x, y):
    import tensorflow as tf
    from cxrtransfer.attacks.steps import loss_gradient

    return loss_gradient(model, tf.constant(x), tf.constant(y)).numpy()


@pytest.mark.parametrize(
    "defence, transform",
    [
        ({"jpeg_quality": 75}, lambda x: D.jpeg(x, 75)),
        ({"bit_depth": 3}, lambda x: D.bit_depth(x, 3)),
    ],
)
def test_bpda_gradient_is_the_identity_gradient_at_the_transformed_image(
    images, defence, transform
):
    """Through a straight-through defence, the input gradient is the undefended model's
    gradient at the transformed image (the transform's own gradient replaced by the identity's)."""
    base = _tiny_model()
    defended = D.build_defended(base, defence)
    x = images.astype(np.float32) / 255.0
    y = np.array([0, 1, 0, 1], np.int32)
    g = _input_gradient(defended, x, y)
    ref = _input_gradient(base, transform(_tf(images)).numpy(), y)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)
    # and the defended model predicts the base model on the transformed image
    np.testing.assert_allclose(
        defended.predict(x, verbose=0),
        base.predict(transform(_tf(images)).numpy(), verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_median_filter_keeps_its_own_gradient(images):
    """The median filter is differentiable: its gradient reaches only the median pixels, so it
    differs from the identity's (no BPDA there)."""
    base = _tiny_model()
    defended = D.build_defended(base, {"median_filter": 3})
    x = images.astype(np.float32) / 255.0
    y = np.array([0, 1, 0, 1], np.int32)
    g = _input_gradient(defended, x, y)
    identity = _input_gradient(base, D.median_filter(_tf(images), 3).numpy(), y)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    assert not np.allclose(g, identity)


def test_defended_checkpoint_saves_and_loads_in_safe_mode(images, tmp_path):
    from cxrtransfer.models.checkpoints import load_checkpoint

    base = _tiny_model()
    defended = D.build_defended(base, {"jpeg_quality": 30})
    path = tmp_path / "model.keras"
    defended.save(path)
    loaded = load_checkpoint(path, 32)  # safe mode, contract checked
    x = images.astype(np.float32) / 255.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), defended.predict(x, verbose=0))
    cfg = loaded.get_layer("defence").get_config()
    assert (cfg["kind"], cfg["value"]) == ("jpeg_quality", 30)


def test_eot_averages_the_gradients_of_a_randomised_defence(images, tmp_path):
    """FGSM with eot_samples E through a noise defence steps along the sign of the mean of E
    gradients drawn in sequence (the same draws as E eager calls from the same noise state);
    E = 1 follows one draw only."""
    import keras
    from cxrtransfer.attacks.iterative import make_attack
    from cxrtransfer.attacks.spec import AttackSpec
    from cxrtransfer.models.checkpoints import load_checkpoint

    path = tmp_path / "noisy.keras"
    D.build_defended(_tiny_model(), {"gaussian_noise": 16.0}, seed=5).save(path)
    x = images.astype(np.float32) / 255.0
    y = np.array([0, 1, 0, 1], np.int32)
    E = 6
    ref_model = load_checkpoint(path)
    grads = [_input_gradient(ref_model, x, y) for _ in range(E)]
    assert not np.allclose(grads[0], grads[1])  # the noise is drawn anew at every call
    mean = np.mean(grads, axis=0)
    spec = AttackSpec(method="fgsm", eps=8.0, step=8.0, steps=1, eot_samples=E)
    adv = make_attack(load_checkpoint(path), spec)(x, y).numpy()
    expected = np.clip(x + 8 / 255 * np.sign(mean), 0, 1)
    moved = np.abs(mean) > 1e-6  # where the sign is well defined
    np.testing.assert_allclose(adv[moved], expected[moved], atol=1e-6)
    one = make_attack(load_checkpoint(path), AttackSpec(method="fgsm", eps=8.0, step=8.0))
    single = one(x, y).numpy()
    assert (np.sign(single - x) != np.sign(expected - x)).any()
    keras.backend.clear_session()


def test_eot_is_part_of_the_attack_record_only_when_on():
    from cxrtransfer.attacks.spec import AttackSpec

    off, on = AttackSpec(method="pgd"), AttackSpec(method="pgd", eot_samples=4)
    assert off.stream_seed() == AttackSpec(method="pgd", eot_samples=1).stream_seed()
    assert off.stream_seed() != on.stream_seed()
    assert on.attrs()["eot_samples"] == 4 and on.cost_per_step == 4
    with pytest.raises(WorkflowError, match="eot_samples"):
        AttackSpec(method="pgd", eot_samples=0)


# --- config -------------------------------------------------------------------------------


@pytest.fixture()
def cfg(root):
    c = yaml.safe_load((root / "config" / "test.yaml").read_text())
    c["defences"] = {"pneu_jpeg": {"model": "pneumothorax_small", "defence": {"jpeg_quality": 75}}}
    c["grid"].append({"sources": ["pneu_jpeg"], "data_task": "own"})
    return c


def test_defended_models_are_targets_and_sources(cfg, root):
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    checks.check_config(cfg, root)
    assert plan.targets_for(cfg, "pneumothorax")[-1] == "pneu_jpeg"
    assert "pneu_jpeg" not in plan.targets_for(cfg, "cardiomegaly")
    facts = plan.source_facts(cfg, "pneu_jpeg")
    assert facts["defence"] == "jpeg_quality=75" and facts["defended_model"] == "pneumothorax_small"
    assert facts["arch"] == cfg["models"]["pneumothorax_small"]["arch"]
    sets = plan.adversarial_sets(cfg, controls=False)
    assert any(s.source == "pneu_jpeg" and s.data_task == "pneumothorax" for s in sets)


@pytest.mark.parametrize(
    "defence, match",
    [
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"bit_depth": 8}, "bit_depth"),
        ({"median_filter": 4}, "median_filter"),
        ({"gaussian_noise": 0}, "gaussian_noise"),
        ({"blur": 3}, "blur"),
        ({"jpeg_quality": 75, "bit_depth": 3}, "jpeg_quality"),
        ({}, "defence"),
    ],
)
def test_schema_refuses_bad_defences(cfg, root, defence, match):
    cfg["defences"]["pneu_jpeg"]["defence"] = defence
    with pytest.raises(SnakemakeWorkflowError, match=match):
        validate(cfg, str(root / "config" / "config.schema.yaml"))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda c: c["defences"]["pneu_jpeg"].update(model="nobody"),
            r"defences\.pneu_jpeg\.model",
        ),
        (
            lambda c: c["defences"].update(
                twice={"model": "pneu_jpeg", "defence": {"bit_depth": 3}}
            ),
            r"defences\.twice\.model: 'pneu_jpeg' is another defended model",
        ),
        (
            lambda c: c["defences"].update(
                pneumothorax_small={"model": "pneumothorax_small_s2", "defence": {"bit_depth": 3}}
            ),
            "also a model",
        ),
        (
            lambda c: c["grid"].append(
                {"sources": [["pneu_jpeg", "pneumothorax_small_s2"]], "data_task": "own"}
            ),
            r"grid\[3\]\.sources: ensemble .* defended models",
        ),
        (
            lambda c: (
                c["attacks"].update(uap={"method": "uap", "split": "val"})
                or c["grid"].append(
                    {"sources": ["pneu_jpeg"], "data_task": "own", "attacks": ["uap"]}
                )
            ),
            r"grid\[\d\]\.sources: 'pneu_jpeg' is a defended model .* universal",
        ),
    ],
)
def test_cross_checks_of_defences(cfg, root, mutate, match):
    bad = copy.deepcopy(cfg)
    mutate(bad)
    validate(bad, str(root / "config" / "config.schema.yaml"))
    with pytest.raises(WorkflowError, match=match):
        checks.check_config(bad, root)


# --- relations and the report ---------------------------------------------------------------


def test_same_network_behind_another_defence_is_its_own_relation():
    plain = {"arch": "ResNet50", "task": "p", "pretrained": "none", "seed": 1}
    jpeg = {**plain, "defence": "jpeg_quality=75"}
    pts = {1, 2, 3}
    f = factors("m", "m_jpeg", plain, jpeg, pts, pts, "abc", "abc")
    assert f["same_network"] and not f["same_defence"]
    assert relation(f, "p", "p") == "same network, other defence"
    # other weights with the same settings and patients: a same-data surrogate, not this
    g = factors("m", "m_jpeg", plain, jpeg, pts, pts, "abc", "xyz")
    assert relation(g, "p", "p") == "same-data surrogate"
    # unknown weights never claim the same network
    assert not factors("m", "n", plain, plain, pts, pts, None, None)["same_network"]


def _row(source, target, attack, eps, adv_auroc, fooling, clean, relation="white-box"):
    return dict(
        data_task="p",
        attack=attack,
        eps=eps,
        source=source,
        target=target,
        relation=relation,
        transfer_rate=0.5,
        fooling_rate=fooling,
        flip_rate=fooling,
        adv_auroc=adv_auroc,
        clean_auroc=clean,
    )


def test_report_shows_each_defence_against_the_non_adaptive_and_the_adaptive_attack():
    models = {
        "m": {"arch": "A", "task": "p"},
        "m_jpeg": {"arch": "A", "task": "p", "defence": "jpeg_quality=75", "defended_model": "m"},
        "m_at": {
            "arch": "A",
            "task": "p",
            "adversarial": "eps=2.0",
            "adversarial_eps": 2.0,
            "init_from": "m",
        },
        "s": {"arch": "B", "task": "p"},
    }
    df = pd.DataFrame(
        [
            _row("m", "m", "pgd", 8.0, 0.10, 0.9, 0.95),
            _row("m", "m_jpeg", "pgd", 8.0, 0.80, 0.2, 0.93, "same network, other defence"),
            _row("m_jpeg", "m_jpeg", "pgd", 8.0, 0.20, 0.8, 0.93),
            _row("m_at", "m_at", "pgd", 8.0, 0.60, 0.4, 0.90),
            _row("s", "m", "pgd", 8.0, 0.70, 0.3, 0.95, "cross-architecture"),
            _row("s", "s", "pgd", 8.0, 0.05, 0.95, 0.94),
        ]
    )
    assert hardened_models(models) == {"m_jpeg", "m_at"}
    text = re.sub(" {2,}", " ", "\n".join(defence_lines(df, models)))  # tabulate's padding
    assert (
        "| m_jpeg | jpeg_quality=75 | pgd | 8 | 0.950 / 0.930 | 0.100 (0.900) | 0.800 (0.200) | 0.200 (0.800) |"
        in text
    )
    assert "overstates the defence" in text  # 0.80 non-adaptive vs 0.20 adaptive
    robust = re.sub(" {2,}", " ", "\n".join(robust_lines(df, models)))  # tabulate's padding
    assert "| m_at | 2 | m | 0.950 -> 0.900 | pgd | 8 | 0.100 (0.900) | 0.600 (0.400) |" in robust
    summary = re.sub(" {2,}", " ", summary_markdown(df, models, "synthetic"))
    # the per-relation means leave the defended and trained models out
    white = [ln for ln in summary.splitlines() if ln.startswith("| white-box |")]
    assert white == [white[0]] and "| white-box | 2 |" in white[0]
    assert "## Defended targets" in summary and "## Adversarially trained models" in summary
    # no adaptive set in the grid: said so, not left out
    no_adaptive = df[df["source"] != "m_jpeg"]
    assert "| n/a |" in re.sub(" {2,}", " ", "\n".join(defence_lines(no_adaptive, models)))
