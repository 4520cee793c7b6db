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
    shape = tuple(model.input_shape[1:])
    if spec.diversity_prob > 0 and (shape[0] is None or shape[1] is None):
        raise WorkflowError("Input diversity needs a model with a fixed input size.")
    if spec.ti_kernel > 1 and any(d is not None and spec.ti_kernel > d for d in shape[:2]):
        raise WorkflowError(
            f"ti_kernel {spec.ti_kernel} is larger than the model's input {shape[0]}x{shape[1]}."
        )
    norm, eps, step, steps = spec.norm, spec.eps_float, spec.step_float, spec.iterations
    restarts = spec.runs
    ascent = -step if spec.targeted else step
    mu, dp, ds = float(spec.momentum), float(spec.diversity_prob), float(spec.diversity_scale)
    m, nv, nes = int(spec.scales), int(spec.variance_samples), bool(spec.nesterov)
    kernel = ti_kernel_weights(spec.ti_kernel) if spec.ti_kernel > 1 else None
    radius = float(spec.variance_bound) * eps
    eot = int(spec.eot_samples)

    def gradient(p, target, u_i, j0):
        """G(p): the mean over the SI scales of the loss gradient at p; DI uniforms
        u_i[j0 + s] for scale s."""

        def one(j, factor):
            di = partial(diverse_input, u=u_i[j], prob=dp, scale=ds) if dp > 0 else None
            if factor is None:
                transform = di
            elif di is None:
                transform = lambda z: z * factor  # noqa: E731
            else:
                transform = lambda z: di(z * factor)  # noqa: E731
            if eot == 1:
                return loss_gradient(model, p, target, transform)
            # EOT: a randomised model draws anew at every call; the mean of the draws
            total = tf.zeros_like(p)
            for _ in tf.range(eot):
                total += loss_gradient(model, p, target, transform)
            return total / eot

        if m == 1:
            return one(j0, None)
        total = tf.zeros_like(p)
        for s in tf.range(m):
            # 1 / 2^s, exact in float32
            factor = 1.0 / tf.cast(tf.bitwise.left_shift(1, s), tf.float32)
            total += one(j0 + s, factor)
        return total / m

    # XLA would draw other neighbours (its Philox differs): compile the gradients, not the loop
    compile_gradients = jit_compile and nv > 0
    if compile_gradients:
        gradient = tf.function(gradient, jit_compile=True)

    def run(x, target, d0, u, vs):
        x_adv = tf.clip_by_value(x + clip_eta(d0, norm, eps), 0.0, 1.0) if spec.random_start else x
        g = tf.zeros_like(x)
        v = tf.zeros_like(x)
        for i in tf.range(steps):
            p = x_adv + (ascent * mu) * g if nes else x_adv
            grad = gradient(p, target, u[i], tf.constant(0))
            if nv > 0:
                around = tf.zeros_like(x)
                for j in tf.range(nv):
                    r = random_lp_vector(tf.shape(x), norm, radius, vs[i, j])
                    around += gradient(p + r, target, u[i], m * (1 + j))
                grad, v = grad + v, around / nv - grad
            if kernel is not None:
                grad = smooth_gradient(grad, kernel)
            if mu > 0:
                g = momentum_update(g, grad, mu)
                grad = g
            eta = clip_eta(x_adv + ascent * optimize_linear(grad, norm) - x, norm, eps)
            x_adv = tf.clip_by_value(x + eta, 0.0, 1.0)
        return x_adv

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

    if jit_compile and not compile_gradients:
        loop = tf.function(loop, jit_compile=True)

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
