"""The DeepFool-based universal perturbation (Moosavi-Dezfooli et al. 2017, "Universal
adversarial perturbations", Algorithm 1; Hirano et al. 2021 for medical images).

Passes over the crafting images (the source's train or val split, in a fresh order seeded by
the attack's seed each pass): for each image that the current perturbation v does not fool,
the minimal DeepFool perturbation of x + v is added to v, which is then projected onto the
L-inf ball of eps. Crafting stops when the fooling rate on the crafting images reaches
1 - delta, or after ``max_passes`` passes.

The sources are binary (a 2-class softmax, column 1 = the finding) with a decision threshold t,
so DeepFool is its two-class case (Moosavi-Dezfooli et al. 2016, Algorithm 1) on the margin
f(x) = log(p1 / p0) - log(t / (1 - t)), the logit difference shifted so that f = 0 is the
source's decision boundary: linearised steps r = -(f + nudge) grad f / ||grad f||^2 from
x + v + (1 + overshoot) sum r until the decision changes (at most ``deepfool_steps``), the image's
perturbation being (1 + overshoot) sum r (the authors' code; nudge 1e-4 as there).

"Fooled" is the decision at t changed, the ``flip_rate`` of the SGD UAP and of the tables.
The fooling rate of a pass is that of the perturbation as stored (integer grey levels added to
the uint8 images). A pass that lowers it is undone (the perturbation of the best pass is kept),
so the kept fooling rate never decreases over passes; both are recorded.

TensorFlow at the top: imported only by the uap job (lazily, from ``attacks.uap``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from cxrtransfer import WorkflowError
from cxrtransfer.metrics.measures import flip_rate
from cxrtransfer.models.inference import make_predict_fn, predict_probs

NUDGE = 1e-4  # added to |f| so each step crosses the boundary (the authors' code)
_TINY = 1e-12  # keeps log p and 1 / ||grad||^2 finite


@dataclass
class DeepFoolHistory:
    """What the crafting did, pass by pass: the fooling rate of each pass's perturbation, the
    rate of the one kept after it (non-decreasing), how many images moved it, and why it
    stopped ("fooling_rate": reached 1 - delta; "max_passes")."""

    pass_fooling_rates: list = field(default_factory=list)
    fooling_rates: list = field(default_factory=list)
    images_updated: list = field(default_factory=list)
    stopped: str = "max_passes"

    @property
    def passes(self) -> int:
        return len(self.fooling_rates)

    def record(self) -> dict:
        return {
            "passes": self.passes,
            "pass_fooling_rates": list(self.pass_fooling_rates),
            "fooling_rates": list(self.fooling_rates),
            "images_updated": list(self.images_updated),
            "stopped": self.stopped,
        }


def logit_threshold(threshold: float) -> float:
    """The decision threshold t on p1 as a threshold on log(p1 / p0)."""
    t = float(threshold)
    if not 0 < t < 1:
        raise WorkflowError(f"A DeepFool UAP needs a decision threshold in (0, 1), got {t}.")
    return float(np.log(t / (1 - t)))


def margin_fn(model, threshold: float):
    """``f(x)`` (B,): the log-odds of the finding minus the threshold's (f >= 0: finding)."""
    shift = tf.constant(logit_threshold(threshold), tf.float32)

    def margin(x):
        probs = model(x, training=False)
        log_p = tf.math.log(tf.maximum(probs, _TINY))
        return log_p[:, 1] - log_p[:, 0] - shift

    return margin


def make_deepfool(model, threshold: float, overshoot: float, max_steps: int):
    """Compiled ``deepfool(x, v) -> (r, steps)``: the minimal DeepFool perturbation r of one
    image x + v (both (1, H, W, 1), [0, 1] pixels, evaluated clipped to [0, 1]) and the
    linearised steps it took (0 when v already fools x)."""
    margin = margin_fn(model, threshold)
    shape = tuple(model.input_shape[1:])
    scale = tf.constant(1.0 + float(overshoot), tf.float32)

    def at(x, v, r_sum):
        return tf.clip_by_value(x + v + scale * r_sum, 0.0, 1.0)

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, *shape), tf.float32),
            tf.TensorSpec((1, *shape), tf.float32),
        ]
    )
    def deepfool(x, v):
        clean_side = tf.sign(margin(x)[0])

        def unfooled(i, r_sum):
            return tf.logical_and(i < max_steps, tf.sign(margin(at(x, v, r_sum))[0]) == clean_side)

        def step(i, r_sum):
            with tf.GradientTape() as tape:
                point = at(x, v, r_sum)
                tape.watch(point)
                f = margin(point)[0]
            grad = tape.gradient(f, point)
            size = (tf.abs(f) + NUDGE) / (tf.reduce_sum(tf.square(grad)) + _TINY)
            return i + 1, r_sum - tf.sign(f) * size * grad

        steps, r_sum = tf.while_loop(unfooled, step, (tf.constant(0), tf.zeros_like(x)))
        return scale * r_sum, steps

    return deepfool


def project_linf(v: np.ndarray, eps: float) -> np.ndarray:
    """v projected onto the L-inf ball of radius eps ([0, 1] pixel units)."""
    return np.clip(v, -eps, eps).astype(np.float32)


def to_levels(v: np.ndarray, levels: int) -> np.ndarray:
    """The float perturbation (1, H, W, 1) as stored: int16 (H, W) grey levels within
    +-levels."""
    return np.clip(np.rint(np.asarray(v)[0, ..., 0] * 255.0), -levels, levels).astype(np.int16)


def perturbed(images_u8: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The uint8 images with the grey levels added, clipped to 0..255: what ``attacks.uap``'s
    ``apply_uap`` stores (not imported: ``attacks.uap`` imports this module)."""
    return np.clip(images_u8.astype(np.int16) + levels[None], 0, 255).astype(np.uint8)


def fooling_rate(predict_fn, images_u8, clean_decision, levels, threshold, batch_size) -> float:
    """The fraction of ``images_u8`` whose decision at ``threshold`` the stored perturbation
    ``levels`` changes (``predict_fn``: ``models.inference.make_predict_fn``)."""
    adv = predict_probs(None, perturbed(images_u8, levels), batch_size, predict_fn)
    return float(flip_rate(clean_decision, adv >= threshold))


def deepfool_pass(deepfool, images: np.ndarray, order, v: np.ndarray, eps: float):
    """One pass of Algorithm 1 over ``images`` (N, H, W, 1) float in ``order``: ``(v, number
    of images whose DeepFool perturbation moved v)``."""
    updated = 0
    for i in order:
        r, steps = deepfool(images[i : i + 1], v)
        if int(steps) > 0:
            v = project_linf(v + np.asarray(r), eps)
            updated += 1
    return v, updated


def craft_uap_deepfool(model, images_u8, spec, threshold, batch_size, progress=None):
    """The DeepFool UAP of ``model`` on uint8 ``images_u8`` (N, H, W) for a ``UapSpec`` with
    ``algorithm: deepfool``: ``(float perturbation (1, H, W, 1), int16 grey levels (H, W),
    DeepFoolHistory)``; the float one is the kept pass's, before rounding to grey levels."""
    images_u8 = np.asarray(images_u8)
    if images_u8.ndim != 3 or images_u8.dtype != np.uint8 or len(images_u8) == 0:
        raise WorkflowError(
            f"UAP crafting needs uint8 images (N, H, W) with N > 0, got {images_u8.dtype} "
            f"{images_u8.shape}."
        )
    deepfool = make_deepfool(model, threshold, spec.overshoot, spec.deepfool_steps)
    images = images_u8[..., None].astype(np.float32) / 255.0
    predict = make_predict_fn(model)
    clean = predict_probs(model, images_u8, batch_size, predict) >= threshold
    rng = np.random.default_rng(spec.seed)
    v = best = np.zeros((1, *images_u8.shape[1:], 1), np.float32)
    history, best_rate = DeepFoolHistory(), -1.0
    for _ in range(spec.max_passes):
        v, updated = deepfool_pass(
            deepfool, images, rng.permutation(len(images)), v, spec.eps_float
        )
        rate = fooling_rate(
            predict, images_u8, clean, to_levels(v, spec.levels), threshold, batch_size
        )
        if rate >= best_rate:
            best, best_rate = v, rate
        v = best  # a pass that lowered the fooling rate is undone
        history.pass_fooling_rates.append(rate)
        history.fooling_rates.append(best_rate)
        history.images_updated.append(updated)
        if progress is not None:
            progress.update(1)
        if best_rate >= 1.0 - spec.delta:
            history.stopped = "fooling_rate"
            break
    return best, to_levels(best, spec.levels), history
