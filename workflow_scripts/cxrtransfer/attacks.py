"""White-box attacks (FGSM, PGD with L-inf / L2, targeted, restarts, MI-FGSM, DI-FGSM).

Pure functions in the spirit of CleverHans' TF2 attacks: ``make_attack`` returns one compiled
``tf.function`` that runs the whole iteration loop. Budgets and step sizes are configured in
1/255 units; models follow the model contract (float32 pixels in [0, 1], shape (N, H, W, 1),
softmax over (no finding, finding)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import WorkflowError

METHODS = ("fgsm", "pgd")
NORMS = ("linf", "l2")
ALG = "philox"  # fixed stateless RNG: the same numbers with and without XLA
_CONFIG_KEYS = {
    "method",
    "norm",
    "step",
    "step_fraction",
    "steps",
    "targeted",
    "random_start",
    "restarts",
    "momentum",
    "diversity_prob",
    "diversity_scale",
    "seed",
}


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration; eps and step in 1/255 units (validated on construction)."""

    method: str
    norm: str = "linf"
    eps: float = 8.0
    step: float = 2.0
    steps: int = 10
    targeted: bool = False
    random_start: bool = False
    restarts: int = 1
    momentum: float = 0.0
    diversity_prob: float = 0.0
    diversity_scale: float = 1.1
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise WorkflowError(
                f"Unknown attack method '{self.method}'; use one of {', '.join(METHODS)}."
            )
        if self.norm not in NORMS:
            raise WorkflowError(
                f"Unknown attack norm '{self.norm}'; use one of {', '.join(NORMS)}."
            )
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise WorkflowError(f"Attack eps must be > 0 (1/255 units), got {self.eps}.")
        if self.steps < 1 or self.restarts < 1:
            raise WorkflowError(
                f"Attack steps and restarts must be >= 1, got steps={self.steps}, "
                f"restarts={self.restarts}."
            )
        if self.method == "pgd":
            if not self.step > 0:
                raise WorkflowError(f"Attack step must be > 0 (1/255 units), got {self.step}.")
            if self.steps > 1 and self.step > self.eps:
                raise WorkflowError(
                    f"Attack step {self.step} is larger than eps {self.eps} (1/255 units) for an "
                    f"iterative attack with {self.steps} steps; use step <= eps "
                    "(e.g. step_fraction: 0.25)."
                )
        if self.momentum < 0:
            raise WorkflowError(f"Attack momentum must be >= 0, got {self.momentum}.")
        if not 0 <= self.diversity_prob <= 1:
            raise WorkflowError(f"diversity_prob must be in [0, 1], got {self.diversity_prob}.")
        if self.diversity_scale < 1:
            raise WorkflowError(f"diversity_scale must be >= 1, got {self.diversity_scale}.")

    @property
    def iterations(self) -> int:
        return 1 if self.method == "fgsm" else int(self.steps)

    @property
    def step_size(self) -> float:
        """Step in 1/255 units actually used (FGSM: eps)."""
        return float(self.eps) if self.method == "fgsm" else float(self.step)

    def attrs(self) -> dict:
        """Plain python scalars for HDF5 attributes (step/steps as actually used)."""
        return {
            "method": str(self.method),
            "norm": str(self.norm),
            "eps": float(self.eps),
            "step": self.step_size,
            "steps": self.iterations,
            "targeted": bool(self.targeted),
            "random_start": bool(self.random_start),
            "restarts": int(self.restarts),
            "momentum": float(self.momentum),
            "diversity_prob": float(self.diversity_prob),
            "diversity_scale": float(self.diversity_scale),
            "seed": int(self.seed),
        }


def spec_from_config(attack_cfg: dict, eps: float) -> AttackSpec:
    """Build an AttackSpec from one entry of the config's ``attacks:`` mapping and an eps."""
    cfg = dict(attack_cfg)
    unknown = sorted(set(cfg) - _CONFIG_KEYS)
    if unknown:
        raise WorkflowError(
            f"Unknown attack setting(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_CONFIG_KEYS))}."
        )
    if "method" not in cfg:
        raise WorkflowError("Attack setting 'method' is required (fgsm or pgd).")
    eps = float(eps)
    if not eps > 0:
        raise WorkflowError(f"Attack eps must be > 0 (1/255 units), got {eps}.")
    method = cfg.pop("method")
    if "step" in cfg and "step_fraction" in cfg:
        raise WorkflowError("Give either 'step' or 'step_fraction' for an attack, not both.")
    if "step" in cfg:
        step = float(cfg.pop("step"))
    else:
        frac = float(cfg.pop("step_fraction", 0.25))
        if not 0 < frac <= 1:
            raise WorkflowError(f"step_fraction must be in (0, 1], got {frac}.")
        step = frac * eps
    if method == "fgsm":
        step, cfg["steps"] = eps, 1
    kwargs = {}
    for key, typ in (
        ("norm", str),
        ("steps", int),
        ("targeted", bool),
        ("random_start", bool),
        ("restarts", int),
        ("momentum", float),
        ("diversity_prob", float),
        ("diversity_scale", float),
        ("seed", int),
    ):
        if key in cfg:
            kwargs[key] = typ(cfg[key])
    return AttackSpec(method=str(method), eps=eps, step=step, **kwargs)


def cross_entropy(y, probs):
    """Per-example cross-entropy -log p_y of softmax outputs ``probs`` (N, K), labels y (N,).

    Computed as log1p(sum_{k!=y} p_k / p_y): the same value as Keras' sparse categorical
    crossentropy on probabilities, but its gradient survives when p_y rounds to 1 in float32.
    """
    import tensorflow as tf

    probs = tf.cast(probs, tf.float32)
    p_y = tf.gather(probs, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    p_other = tf.reduce_sum(probs, axis=1) - p_y
    p_other = tf.maximum(p_other, 0.0)
    return tf.math.log1p(p_other / tf.maximum(p_y, 1e-30))


def _interp_matrix(out_size: int, in_size: int, scaled, offset):
    """(out_size, in_size) matrix of bilinear resizing (half-pixel centres, as tf.image.resize)
    of a length-``in_size`` axis to length ``scaled``, placed at ``offset`` in a zero canvas."""
    import tensorflow as tf

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
    import tensorflow as tf

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


def make_attack(model, spec: AttackSpec, jit_compile: bool = False) -> Callable:
    """Return ``attack(x, y) -> x_adv``: the whole attack loop in one ``tf.function``.

    x: float32 (N, H, W, 1) in [0, 1]; y: int labels (N,). Traced once for any batch size.
    Random numbers (random start, DI) come from stateless Philox ops seeded by ``spec.seed``
    only and are drawn outside the (optionally XLA-compiled) loop, so a call is a pure function
    of (x, y) and gives the same draws with and without ``jit_compile``.
    """
    import tensorflow as tf

    shape = tuple(model.input_shape[1:])
    if spec.diversity_prob > 0 and (shape[0] is None or shape[1] is None):
        raise WorkflowError("Input diversity needs a model with a fixed input size.")
    eps = float(spec.eps) / 255.0
    step = spec.step_size / 255.0
    steps = spec.iterations
    # Without random start or DI every restart is the same deterministic run: do it once.
    restarts = int(spec.restarts) if spec.random_start or spec.diversity_prob > 0 else 1
    direction = -1.0 if spec.targeted else 1.0
    linf = spec.norm == "linf"
    mu = float(spec.momentum)
    dp, ds = float(spec.diversity_prob), float(spec.diversity_scale)

    def seed(stream: int):
        return tf.constant([int(spec.seed), stream], tf.int64)

    def per_image_norm(t):
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[-3, -2, -1], keepdims=True))

    def project(x, x_adv):
        d = x_adv - x
        if linf:
            d = tf.clip_by_value(d, -eps, eps)
        else:
            d = d * tf.minimum(1.0, tf.math.divide_no_nan(tf.constant(eps), per_image_norm(d)))
        return tf.clip_by_value(x + d, 0.0, 1.0)

    def draws(x):
        """Random starts (restarts, N, H, W, C) and DI uniforms (restarts, steps, 4)."""
        shp = tf.concat([[restarts], tf.shape(x)], axis=0)
        if not spec.random_start:
            d0 = tf.zeros([restarts, 1, 1, 1, 1])
        elif linf:
            d0 = tf.random.stateless_uniform(shp, seed(0), -eps, eps, alg=ALG)
        else:  # uniform in the L2 ball: Gaussian direction, radius eps * U^(1/dim)
            g = tf.random.stateless_normal(shp, seed(0), alg=ALG)
            dim = float(np.prod([int(s) for s in x.shape[1:]]))
            rad = tf.random.stateless_uniform(shp[:2], seed(1), alg=ALG) ** (1.0 / dim)
            d0 = tf.math.divide_no_nan(g, per_image_norm(g)) * (eps * rad)[..., None, None, None]
        u = tf.random.stateless_uniform([restarts, steps, 4], seed(2), alg=ALG)
        return d0, u

    def gradient(x_adv, target, u):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            x_in = diverse_input(x_adv, u, dp, ds) if dp > 0 else x_adv
            loss = tf.reduce_sum(cross_entropy(target, model(x_in, training=False)))
        return tape.gradient(loss, x_adv)

    def run(x, target, d0, u):
        x_adv = project(x, x + d0) if spec.random_start else x
        g = tf.zeros_like(x)
        for i in tf.range(steps):
            grad = gradient(x_adv, target, u[i])
            if mu > 0:
                l1 = tf.reduce_mean(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
                g = mu * g + tf.math.divide_no_nan(grad, l1)
                grad = g
            if linf:
                d = tf.sign(grad)
            else:
                d = tf.math.divide_no_nan(grad, per_image_norm(grad))
            x_adv = project(x, x_adv + (direction * step) * d)
        return x_adv

    def loop(x, y, d0, u):
        target = 1 - y if spec.targeted else y
        if restarts == 1:
            return run(x, target, d0[0], u[0])
        best = x
        worst = np.inf if spec.targeted else -np.inf
        best_loss = tf.fill(tf.shape(y), tf.constant(worst, tf.float32))
        for r in tf.range(restarts):
            x_adv = run(x, target, d0[r], u[r])
            loss = cross_entropy(target, model(x_adv, training=False))
            better = loss < best_loss if spec.targeted else loss > best_loss
            best = tf.where(better[:, None, None, None], x_adv, best)
            best_loss = tf.where(better, loss, best_loss)
        return best

    if jit_compile:
        loop = tf.function(loop, jit_compile=True)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
    )
    def attack_graph(x, y):
        d0, u = draws(x)
        return loop(x, y, d0, u)

    def attack(x, y):
        return attack_graph(tf.convert_to_tensor(x, tf.float32), tf.cast(y, tf.int32))

    attack.graph = attack_graph
    attack.spec = spec
    return attack


def quantise(x_clean_u8: np.ndarray, x_adv: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """Round adversarial images to uint8 (N, H, W) keeping the integer perturbation in budget."""
    clean = np.asarray(x_clean_u8)
    if clean.ndim == 4:
        clean = clean[..., 0]
    adv = np.asarray(x_adv, dtype=np.float64)
    if adv.ndim == 4:
        adv = adv[..., 0]
    if clean.shape != adv.shape:
        raise WorkflowError(f"quantise: clean {clean.shape} and adversarial {adv.shape} differ.")
    c = clean.astype(np.int64)
    v = np.clip(adv, 0.0, 1.0) * 255.0 - c  # real perturbation in 1/255 units
    if spec.norm == "linf":
        b = math.floor(spec.eps + 1e-9)
        d = np.clip(np.rint(v).astype(np.int64), -b, b)
    else:
        d = np.rint(v).astype(np.int64)
        axes = tuple(range(1, d.ndim))
        over = np.sqrt(np.sum(d.astype(np.float64) ** 2, axis=axes)) > spec.eps
        if over.any():
            vv = v[over]
            n = np.sqrt(np.sum(vv**2, axis=axes, keepdims=True))
            vv = vv * np.minimum(1.0, spec.eps / np.maximum(n, 1e-12))
            d[over] = np.trunc(vv).astype(np.int64)
        # Guard against float edge cases: shrink the largest entry until within budget.
        for i in np.flatnonzero(np.sum(d.astype(np.float64) ** 2, axis=axes) > spec.eps**2):
            di = d[i].reshape(-1)
            while np.sum(di.astype(np.float64) ** 2) > spec.eps**2:
                j = np.argmax(np.abs(di))
                di[j] -= np.sign(di[j])
            d[i] = di.reshape(d[i].shape)
    return np.clip(c + d, 0, 255).astype(np.uint8)


def _prob_fn(model):
    import tensorflow as tf

    shape = tuple(model.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    def prob(x):
        return tf.cast(model(x, training=False)[:, 1], tf.float32)

    return prob


def run_attack_batches(
    model,
    attack_fn,
    images_u8: np.ndarray,
    labels: np.ndarray,
    spec,
    batch_size: int,
    progress=None,
) -> dict:
    """Attack ``images_u8`` (N, H, W) uint8 in batches; quantise; report probabilities/norms."""
    images_u8 = np.asarray(images_u8)
    labels = np.asarray(labels)
    if images_u8.dtype != np.uint8 or images_u8.ndim != 3:
        raise WorkflowError(
            f"Attack input must be uint8 images (N, H, W), got {images_u8.dtype} {images_u8.shape}."
        )
    if labels.shape != (len(images_u8),):
        raise WorkflowError(f"Labels {labels.shape} do not match images {images_u8.shape}.")
    if batch_size < 1:
        raise WorkflowError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(images_u8)
    prob = _prob_fn(model)
    out = {
        "adv_u8": np.zeros_like(images_u8),
        "clean_prob": np.zeros(n, np.float32),
        "adv_prob_float": np.zeros(n, np.float32),
        "adv_prob": np.zeros(n, np.float32),
        "l2": np.zeros(n, np.float32),
        "linf": np.zeros(n, np.float32),
    }
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        clean_u8 = images_u8[a:b]
        x = clean_u8[..., None].astype(np.float32) / 255.0
        x_adv = np.asarray(attack_fn(x, labels[a:b].astype(np.int32)))
        adv_u8 = quantise(clean_u8, x_adv, spec)
        xq = adv_u8[..., None].astype(np.float32) / 255.0
        p = prob(np.concatenate([x, x_adv.astype(np.float32), xq])).numpy()
        k = b - a
        out["adv_u8"][a:b] = adv_u8
        out["clean_prob"][a:b] = p[:k]
        out["adv_prob_float"][a:b] = p[k : 2 * k]
        out["adv_prob"][a:b] = p[2 * k :]
        d = (adv_u8.astype(np.float64) - clean_u8.astype(np.float64)).reshape(k, -1) / 255.0
        out["l2"][a:b] = np.sqrt(np.sum(d**2, axis=1))
        out["linf"][a:b] = np.max(np.abs(d), axis=1) if d.shape[1] else 0.0
        if progress is not None:
            progress.update(k)
    return out
