"""The iterative attack: ``make_attack`` compiles FGSM / PGD (L-inf or L2, targeted, restarts)
and the transfer attacks MI-FGSM, DI-FGSM, TI-FGSM, SI-NI-FGSM and VMI-FGSM, combinable, into
one ``tf.function`` that runs the whole iteration loop.

Models follow the model contract (float32 pixels in [0, 1], shape (N, H, W, 1), softmax over
(no finding, finding)). Transfer attacks (one loop, each switched on by its own setting):
MI-FGSM ``momentum`` (Dong et al. 2018); DI-FGSM ``diversity_prob`` (Xie et al. 2019); TI-FGSM
``ti_kernel`` (Dong et al. 2019: the gradient is smoothed with a Gaussian kernel); SI-NI-FGSM
``scales`` and ``nesterov`` (Lin et al. 2020: gradients averaged over x / 2^i; gradient taken at
the look-ahead x + alpha mu g); VMI-FGSM ``variance_samples`` and ``variance_bound`` (Wang and He
2021: the previous step's gradient variance over a neighbourhood tunes the gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import tensorflow as tf

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import AttackSpec, ti_kernel_weights
from cxrtransfer.attacks.steps import (
    attack_draws,
    clip_eta,
    cross_entropy,
    diverse_input,
    loss_gradient,
    momentum_update,
    optimize_linear,
    random_lp_vector,
    smooth_gradient,
)


def make_attack(model, spec: AttackSpec, jit_compile: bool = False) -> Callable:
    """Return ``attack(x, y, seed=None) -> x_adv``: the whole attack in one ``tf.function``.

    x: float32 (N, H, W, 1) in [0, 1]; y: int labels (N,); seed: stateless seed (2,) int64 of
    this call's random stream (random starts, DI uniforms, VMI neighbours; None:
    ``spec.stream_seed()``). Traced once for any batch size and seed (``attack.graph`` is the
    ``tf.function``). Random starts and DI uniforms are drawn outside the (optionally
    XLA-compiled) loop with stateless Philox ops (``attack_draws``); VMI neighbours inside the
    loop, one at a time, with stateless Philox ops from per-sample seeds drawn outside
    (``variance_seeds``). XLA's Philox kernels give other numbers than TensorFlow's, so with
    VMI ``jit_compile`` compiles each gradient evaluation instead of the whole loop and the
    neighbours are drawn outside XLA. So a call is a pure function of (x, y, seed), the same
    with and without ``jit_compile``; restarts draw distinct numbers (leading restarts axis).

    One step from x_t (eps ball projection and [0, 1] clipping as PGD):

    1. p = x_t + step * mu * g_t with ``nesterov`` (NI-FGSM; g_t the momentum), else p = x_t;
    2. G(z) = mean over i < ``scales`` of grad_z J(DI(z / 2^i)) (SI-FGSM; each term with its own
       DI transform when DI is on); gradient grad = G(p);
    3. VMI-FGSM: grad + v_t is used instead of grad, and v_{t+1} = mean_j G(p + r_j) - G(p)
       with ``variance_samples`` r_j uniform in the ``norm`` ball of radius
       ``variance_bound * eps`` (v_0 = 0; neither p nor p + r_j are clipped, as in the papers);
    4. TI-FGSM: the result is convolved with ``ti_kernel_weights(ti_kernel)``;
    5. MI-FGSM: g_{t+1} = mu g_t + d / mean|d| (``momentum_update``), the step follows g_{t+1};
       else it follows d;
    6. x_{t+1} = clip(x + clip_eta(x_t + step * optimize_linear(.) - x)) (targeted: - step).

    With every transfer setting off this is PGD (FGSM with one step of size eps).
    """
    shape = _input_shape(model, spec)
    gradient = _gradient_fn(model, spec)
    # XLA would draw other neighbours (its Philox differs): compile the gradients, not the loop
    compile_gradients = jit_compile and spec.variance_samples > 0
    if compile_gradients:
        gradient = tf.function(gradient, jit_compile=True)
    loop = _restarts_fn(model, spec, _run_fn(spec, gradient))
    if jit_compile and not compile_gradients:
        loop = tf.function(loop, jit_compile=True)
    return _callable(spec, _graph(spec, shape, loop))


def _input_shape(model, spec: AttackSpec) -> tuple:
    """The model's input shape (H, W, C), checked against the settings that need sizes."""
    shape = tuple(model.input_shape[1:])
    if spec.diversity_prob > 0 and (shape[0] is None or shape[1] is None):
        raise WorkflowError("Input diversity needs a model with a fixed input size.")
    if spec.ti_kernel > 1 and any(d is not None and spec.ti_kernel > d for d in shape[:2]):
        raise WorkflowError(
            f"ti_kernel {spec.ti_kernel} is larger than the model's input {shape[0]}x{shape[1]}."
        )
    return shape


def _input_transform(u_j, factor, spec: AttackSpec):
    """The transform of one loss gradient: DI with uniforms ``u_j`` (when DI is on) after the
    SI scaling by ``factor`` (None: no scaling); None when both are off."""
    dp, ds = float(spec.diversity_prob), float(spec.diversity_scale)
    di = partial(diverse_input, u=u_j, prob=dp, scale=ds) if dp > 0 else None
    if factor is None:
        return di
    if di is None:
        return lambda z: z * factor
    return lambda z: di(z * factor)


def _eot_gradient(model, p, target, transform, eot: int):
    """The loss gradient at ``p``; with EOT the mean of ``eot`` evaluations (a randomised model
    draws anew at every call)."""
    if eot == 1:
        return loss_gradient(model, p, target, transform)
    total = tf.zeros_like(p)
    for _ in tf.range(eot):
        total += loss_gradient(model, p, target, transform)
    return total / eot


def _gradient_fn(model, spec: AttackSpec) -> Callable:
    """``gradient(p, target, u_i, j0)`` = G(p): the mean over the SI scales of the loss gradient
    at p; DI uniforms u_i[j0 + s] for scale s."""
    m, eot = int(spec.scales), int(spec.eot_samples)

    def gradient(p, target, u_i, j0):
        if m == 1:
            return _eot_gradient(model, p, target, _input_transform(u_i[j0], None, spec), eot)
        total = tf.zeros_like(p)
        for s in tf.range(m):
            # 1 / 2^s, exact in float32
            factor = 1.0 / tf.cast(tf.bitwise.left_shift(1, s), tf.float32)
            transform = _input_transform(u_i[j0 + s], factor, spec)
            total += _eot_gradient(model, p, target, transform, eot)
        return total / m

    return gradient


def _variance_gradient(gradient, p, x, target, u_i, vs_i, spec: AttackSpec):
    """VMI-FGSM: the mean of G(p + r_j) over the step's ``variance_samples`` neighbours r_j,
    uniform in the ``norm`` ball of radius ``variance_bound * eps``."""
    m, nv = int(spec.scales), int(spec.variance_samples)
    radius = float(spec.variance_bound) * spec.eps_float
    around = tf.zeros_like(x)
    for j in tf.range(nv):
        r = random_lp_vector(tf.shape(x), spec.norm, radius, vs_i[j])
        around += gradient(p + r, target, u_i, m * (1 + j))
    return around / nv


def _project(x, x_adv, grad, ascent: float, spec: AttackSpec):
    """One signed (linf) or normalised (l2) step along ``grad``, projected onto the eps ball
    around ``x`` and clipped to [0, 1]."""
    norm, eps = spec.norm, spec.eps_float
    eta = clip_eta(x_adv + ascent * optimize_linear(grad, norm) - x, norm, eps)
    return tf.clip_by_value(x + eta, 0.0, 1.0)


def _run_fn(spec: AttackSpec, gradient) -> Callable:
    """``run(x, target, d0, u, vs) -> x_adv``: one restart, the steps of ``make_attack``."""
    norm, eps, steps = spec.norm, spec.eps_float, spec.iterations
    ascent = -spec.step_float if spec.targeted else spec.step_float
    mu, nv, nes = float(spec.momentum), int(spec.variance_samples), bool(spec.nesterov)
    kernel = ti_kernel_weights(spec.ti_kernel) if spec.ti_kernel > 1 else None

    def run(x, target, d0, u, vs):
        x_adv = tf.clip_by_value(x + clip_eta(d0, norm, eps), 0.0, 1.0) if spec.random_start else x
        g = tf.zeros_like(x)
        v = tf.zeros_like(x)
        for i in tf.range(steps):
            p = x_adv + (ascent * mu) * g if nes else x_adv
            grad = gradient(p, target, u[i], tf.constant(0))
            if nv > 0:
                around = _variance_gradient(gradient, p, x, target, u[i], vs[i], spec)
                grad, v = grad + v, around - grad
            if kernel is not None:
                grad = smooth_gradient(grad, kernel)
            if mu > 0:
                g = momentum_update(g, grad, mu)
                grad = g
            x_adv = _project(x, x_adv, grad, ascent, spec)
        return x_adv

    return run


def _restarts_fn(model, spec: AttackSpec, run) -> Callable:
    """``loop(x, y, d0, u, vs)``: the restarts, keeping per image the example of the highest
    loss (targeted: the lowest loss of the target label)."""
    restarts = spec.runs

    def loop(x, y, d0, u, vs):
        target = 1 - y if spec.targeted else y
        if restarts == 1:
            return run(x, target, d0[0], u[0], vs[0])
        best = x
        worst = np.inf if spec.targeted else -np.inf
        best_loss = tf.fill(tf.shape(y), tf.constant(worst, tf.float32))
        for r in tf.range(restarts):
            x_adv = run(x, target, d0[r], u[r], vs[r])
            loss = cross_entropy(target, model(x_adv, training=False))
            better = loss < best_loss if spec.targeted else loss > best_loss
            best = tf.where(better[:, None, None, None], x_adv, best)
            best_loss = tf.where(better, loss, best_loss)
        return best

    return loop


def _graph(spec: AttackSpec, shape: tuple, loop):
    """The ``tf.function`` of a call: the draws, then the loop; traced once for any batch."""

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((2,), tf.int64),
        ]
    )
    def attack_graph(x, y, seed):
        d0, u, vs = attack_draws(spec, seed, tf.shape(x))
        return loop(x, y, d0, u, vs)

    return attack_graph


def _callable(spec: AttackSpec, attack_graph) -> Callable:
    """``attack(x, y, seed=None)`` over numpy or tensors (seed None: ``spec.stream_seed()``)."""
    default_seed = spec.stream_seed()

    def attack(x, y, seed=None):
        s = default_seed if seed is None else seed
        return attack_graph(
            tf.convert_to_tensor(x, tf.float32),
            tf.cast(y, tf.int32),
            tf.convert_to_tensor(np.asarray(s, np.int64).reshape(2)),
        )

    attack.graph = attack_graph
    attack.spec = spec
    return attack
