"""Building blocks of the white-box attacks, in the spirit of CleverHans' TF2 attacks (TF;
images are (..., H, W, C), norms are per image): the loss (``cross_entropy``), projection
(``clip_eta``), steepest ascent direction (``optimize_linear``), random starts
(``random_lp_vector``), and the transfer-attack pieces: MI-FGSM ``momentum_update``, DI-FGSM
``diverse_input``, TI-FGSM ``smooth_gradient``, VMI-FGSM ``variance_seeds``; ``attack_draws``
draws the random numbers of one attack call.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import AttackSpec

ALG = "philox"  # fixed stateless RNG: the same numbers with and without XLA


def cross_entropy(y, probs):
    """Per-example cross-entropy -log p_y of softmax outputs ``probs`` (N, K), labels y (N,).

    Computed as log1p(sum_{k!=y} p_k / p_y) where p_y >= 1/2: the same value as Keras' sparse
    categorical crossentropy on probabilities, but its gradient survives when p_y rounds to 1
    in float32. Where p_y < 1/2 it is log(p_y + p_other) - log(p_y): the ratio's gradient
    p_other / p_y^2 would overflow float32 for p_y below about 1e-19 (a look-ahead point of
    NI-FGSM far outside the image range reaches that) and turn the step into NaN. Each branch
    is finite everywhere, so ``tf.where`` passes no NaN gradient from the other.
    """
    probs = tf.cast(probs, tf.float32)
    p_y = tf.gather(probs, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    p_other = tf.reduce_sum(probs, axis=1) - p_y
    p_other = tf.maximum(p_other, 0.0)
    confident = tf.math.log1p(p_other / tf.maximum(p_y, 0.5))
    wrong = tf.math.log(tf.maximum(p_y + p_other, 1e-30)) - tf.math.log(tf.maximum(p_y, 1e-30))
    return tf.where(p_y >= 0.5, confident, wrong)


def _l2(t):
    """Per-image L2 norm over the last three axes, kept for broadcasting."""
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[-3, -2, -1], keepdims=True))


def clip_eta(eta, norm: str, eps: float):
    """Project perturbations ``eta`` (..., H, W, C) onto the ``norm`` ball of radius ``eps``
    ([0, 1] pixel units): clip each pixel (linf) or rescale images longer than eps (l2)."""
    if norm == "linf":
        return tf.clip_by_value(eta, -eps, eps)
    if norm == "l2":
        return eta * tf.minimum(1.0, tf.math.divide_no_nan(tf.constant(eps, eta.dtype), _l2(eta)))
    raise WorkflowError(f"Unknown norm '{norm}'.")


def optimize_linear(grad, norm: str):
    """Unit-``norm`` direction maximising <grad, d>: sign(grad) (linf), grad / ||grad||_2 (l2)."""
    if norm == "linf":
        return tf.sign(grad)
    if norm == "l2":
        return tf.math.divide_no_nan(grad, _l2(grad))
    raise WorkflowError(f"Unknown norm '{norm}'.")


def random_lp_vector(shape, norm: str, eps: float, seed):
    """Uniform random perturbations in the ``norm`` ball of radius ``eps`` ([0, 1] units).

    ``shape`` (..., H, W, C); ``seed`` a stateless seed (2,) int64 (or an int32 tensor, as
    ``variance_seeds`` gives for use inside XLA). linf: uniform per pixel in
    [-eps, eps]; l2: uniform in the ball (Gaussian direction, radius eps * U^(1/dim)).
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    if not (isinstance(seed, tf.Tensor) and seed.dtype == tf.int32):  # int32: usable in XLA
        seed = tf.convert_to_tensor(seed, tf.int64)
    if norm == "linf":
        return tf.random.stateless_uniform(shape, seed, -eps, eps, alg=ALG)
    if norm != "l2":
        raise WorkflowError(f"Unknown norm '{norm}'.")
    s_dir, s_rad = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg=ALG))
    g = tf.random.stateless_normal(shape, s_dir, alg=ALG)
    dim = tf.cast(tf.reduce_prod(shape[-3:]), tf.float32)
    rad = tf.random.stateless_uniform(shape[:-3], s_rad, alg=ALG) ** (1.0 / dim)
    return tf.math.divide_no_nan(g, _l2(g)) * (eps * rad)[..., None, None, None]


def momentum_update(g, grad, mu: float):
    """MI-FGSM accumulator: mu * g + grad / mean|grad| (per image)."""
    l1 = tf.reduce_mean(tf.abs(grad), axis=[-3, -2, -1], keepdims=True)
    return mu * g + tf.math.divide_no_nan(grad, l1)


def _interp_matrix(out_size: int, in_size: int, scaled, offset):
    """(out_size, in_size) matrix of bilinear resizing (half-pixel centres, as tf.image.resize)
    of a length-``in_size`` axis to length ``scaled``, placed at ``offset`` in a zero canvas."""
    scaled = tf.cast(scaled, tf.float32)
    r = tf.range(out_size, dtype=tf.float32) - tf.cast(offset, tf.float32)
    src = (r + 0.5) * (in_size / scaled) - 0.5
    src = tf.clip_by_value(src, 0.0, in_size - 1.0)
    lo = tf.floor(src)
    frac = src - lo
    lo_i = tf.cast(lo, tf.int32)
    hi_i = tf.minimum(lo_i + 1, in_size - 1)
    m = (1.0 - frac)[:, None] * tf.one_hot(lo_i, in_size) + frac[:, None] * tf.one_hot(
        hi_i, in_size
    )
    valid = tf.cast((r >= 0.0) & (r < scaled), tf.float32)
    return m * valid[:, None]


def diverse_input(x, u, prob: float, scale: float):
    """DI-FGSM transform with uniforms ``u`` (4,): with probability ``prob`` resize the batch to
    a random size in [H, int(H*scale)), zero-pad at a random offset to int(H*scale), resize back
    to H. Written as two static-shape matrix products (XLA-friendly, exactly bilinear)."""
    h, w = int(x.shape[1]), int(x.shape[2])
    mats = []
    for size, uu, uo in ((h, u[1], u[2]), (w, u[1], u[3])):
        big = int(size * scale)
        if big <= size:
            mats.append(tf.eye(size))
            continue
        rnd = size + tf.minimum(tf.cast(tf.floor(uu * (big - size)), tf.int32), big - size - 1)
        off = tf.minimum(
            tf.cast(tf.floor(uo * tf.cast(big - rnd + 1, tf.float32)), tf.int32), big - rnd
        )
        pad = _interp_matrix(big, size, rnd, off)  # (big, size): resize + pad
        back = _interp_matrix(size, big, size, 0)  # (size, big): resize back
        mats.append(tf.where(u[0] < prob, back @ pad, tf.eye(size)))
    return tf.einsum("ih,nhwc,jw->nijc", mats[0], x, mats[1])


def loss_gradient(model, x, y, transform=None):
    """Gradient w.r.t. ``x`` of the summed cross-entropy of labels ``y`` at
    ``model(transform(x))`` (``transform`` e.g. a DI transform; None: identity)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        x_in = transform(x) if transform is not None else x
        loss = tf.reduce_sum(cross_entropy(y, model(x_in, training=False)))
    return tape.gradient(loss, x)


def smooth_gradient(grad, kernel):
    """TI-FGSM: convolve each channel of ``grad`` (N, H, W, C) with ``kernel`` (k, k)
    (depthwise, stride 1, SAME zero padding; the kernel is symmetric, so convolution and
    correlation agree)."""
    c = int(grad.shape[-1])
    w = tf.tile(tf.constant(np.asarray(kernel, np.float32))[:, :, None, None], [1, 1, c, 1])
    return tf.nn.depthwise_conv2d(grad, w, strides=[1, 1, 1, 1], padding="SAME")


def variance_seeds(seed, runs: int, steps: int, samples: int):
    """Stateless seeds, int32 (runs, steps, samples, 2), of the VMI neighbours of one call with
    stateless seed ``seed``: sample j of step i of restart r is
    ``random_lp_vector(shape, norm, variance_bound * eps, seeds[r, i, j])``. int32 so they can
    be used inside an XLA cluster (drawn there, one neighbour at a time, instead of holding
    runs x steps x samples images)."""
    s_var = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed, tf.int64), 3, ALG)[2]
    return tf.random.stateless_uniform(
        [runs, steps, samples, 2], s_var, minval=None, maxval=None, dtype=tf.int32, alg=ALG
    )


def attack_draws(spec: AttackSpec, seed, x_shape):
    """The random numbers of one attack call with stateless seed ``seed`` (2,) on a batch of
    shape ``x_shape``: ``(d0, u, vseeds)`` with random starts d0 (runs, *x_shape) (zeros
    (runs, 1, 1, 1, 1) without random start), DI uniforms u (runs, steps, k, 4) with k =
    ``spec.gradients_per_step`` (gradient j of a step uses u[r, i, j]: scale s of the point at
    the step is j = s, of VMI neighbour n it is j = scales * (1 + n) + s) and VMI seeds
    (``variance_seeds``; a dummy (runs, 1, 1, 2) without VMI).

    The first two of ``stateless_split(seed, 3)`` are those of ``stateless_split(seed, 2)``,
    and u is drawn with shape (runs, steps, k * 4): attacks without the later transfer
    settings draw exactly the numbers they drew before those existed.
    """
    runs, steps, k = spec.runs, spec.iterations, spec.gradients_per_step
    norm, eps = spec.norm, spec.eps_float
    seed = tf.convert_to_tensor(seed, tf.int64)
    s_start, s_di, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 3, alg=ALG))
    if spec.random_start:
        d0 = random_lp_vector(tf.concat([[runs], x_shape], 0), norm, eps, s_start)
    else:
        d0 = tf.zeros([runs, 1, 1, 1, 1])
    u = tf.random.stateless_uniform([runs, steps, k * 4], s_di, alg=ALG)
    u = tf.reshape(u, [runs, steps, k, 4])
    if spec.variance_samples > 0:
        vseeds = variance_seeds(seed, runs, steps, spec.variance_samples)
    else:
        vseeds = tf.zeros([runs, 1, 1, 2], tf.int32)
    return d0, u, vseeds
