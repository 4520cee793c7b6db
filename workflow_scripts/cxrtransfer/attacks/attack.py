"""White-box attacks (FGSM, PGD with L-inf / L2, targeted, restarts, and the transfer attacks
MI-FGSM, DI-FGSM, TI-FGSM, SI-NI-FGSM and VMI-FGSM, combinable).

Pure functions in the spirit of CleverHans' TF2 attacks: the building blocks (``clip_eta``,
``optimize_linear``, ``random_lp_vector``, ``diverse_input``, ``cross_entropy``) are module-level
functions and ``make_attack`` returns one compiled ``tf.function`` that runs the whole iteration
loop. Units: L-inf budgets and steps are in 1/255 units (eps 8 means 8/255 per pixel); L2
budgets and steps are L2 norms of the perturbation in [0, 1] pixel units (eps 1.0 means
||delta||_2 <= 1). Models follow the model contract (float32 pixels in [0, 1], shape
(N, H, W, 1), softmax over (no finding, finding)).

Transfer attacks (one loop, each switched on by its own setting; see ``make_attack``):
MI-FGSM ``momentum`` (Dong et al. 2018); DI-FGSM ``diversity_prob`` (Xie et al. 2019); TI-FGSM
``ti_kernel`` (Dong et al. 2019: the gradient is smoothed with a Gaussian kernel); SI-NI-FGSM
``scales`` and ``nesterov`` (Lin et al. 2020: gradients averaged over x / 2^i; gradient taken at
the look-ahead x + alpha mu g); VMI-FGSM ``variance_samples`` and ``variance_bound`` (Wang and He
2021: the previous step's gradient variance over a neighbourhood tunes the gradient).

Random numbers (random starts, DI transforms, VMI neighbours) come from stateless Philox ops
seeded per call:
``run_attack_batches`` derives one seed per batch with ``stream_seed`` from the attack seed, the
attack configuration, the caller's stream keys (source model, data task, shard) and the batch
index, so runs are reproducible and different batches/shards/sources/eps get independent draws.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

import numpy as np

from cxrtransfer import WorkflowError

METHODS = ("fgsm", "pgd")
NORMS = ("linf", "l2")
EPS_UNITS = {"linf": "1/255", "l2": "L2, [0,1] pixels"}
ALG = "philox"  # fixed stateless RNG: the same numbers with and without XLA
# A TI kernel whose centre pixel carries more than this share of its weight does not smooth
# (nsig 3: size 3 has 0.957, size 5 0.358): it is refused rather than run as a no-op.
TI_MAX_CENTRE_WEIGHT = 0.5


def steps_to_reach(eps: float, step: float) -> int:
    """The fewest steps of size ``step`` whose sum reaches ``eps`` (same units): an iterative
    attack (or a universal perturbation) with fewer cannot reach the budget its label says."""
    return math.ceil(eps / step - 1e-9)


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
    "ti_kernel",
    "scales",
    "nesterov",
    "variance_samples",
    "variance_bound",
    "eot_samples",
}
# The transfer-attack settings added after the others, with their "off" values: a spec with all
# of them off is the attack it was before they existed and keeps its random streams (they enter
# ``stream_seed`` only when on; ``variance_bound`` only matters with ``variance_samples``).
_NEW_KEYS_OFF = {
    "ti_kernel": lambda s: s.ti_kernel <= 1,
    "scales": lambda s: s.scales == 1,
    "nesterov": lambda s: not s.nesterov,
    "variance_samples": lambda s: s.variance_samples == 0,
    "variance_bound": lambda s: s.variance_samples == 0,
    "eot_samples": lambda s: s.eot_samples == 1,
}


def _unit(norm: str) -> str:
    return EPS_UNITS.get(norm, "?")


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration (validated on construction).

    ``eps`` and ``step`` depend on ``norm``:

    - ``linf``: 1/255 units, as before (eps 8 = 8/255 per pixel; the stored uint8 perturbation
      is bounded by floor(eps) grey levels);
    - ``l2``: the L2 norm of the perturbation in [0, 1] pixel units, the usual convention
      (e.g. eps 0.5, 1.0, 2.0 for small grayscale images; the stored uint8 perturbation d in
      grey levels satisfies ||d||_2 / 255 <= eps, checked exactly on integers).

    ``eps_float`` / ``step_float`` give both in [0, 1] pixel units as the attack uses them.

    Transfer attacks (all off by default; any combination, see ``make_attack``):

    - ``momentum`` mu > 0: MI-FGSM; ``diversity_prob`` / ``diversity_scale``: DI-FGSM;
    - ``ti_kernel`` k (odd; 0 or 1 = off): TI-FGSM, the gradient is convolved with the k x k
      Gaussian kernel ``ti_kernel_weights(k)`` (nsig 3, as the authors' ``gkern``);
    - ``scales`` m (1 = off): SI-FGSM, the mean of the gradients at x / 2^i, i = 0..m-1;
    - ``nesterov``: NI-FGSM, the gradient at the look-ahead x + step * mu * g (needs momentum);
    - ``variance_samples`` N (0 = off) and ``variance_bound`` beta: VMI-FGSM, the gradient is
      tuned by the variance of the previous step, estimated from N points drawn uniformly in the
      ``norm`` ball of radius beta * eps around it;
    - ``eot_samples`` E (1 = off): EOT (Athalye et al. 2018), every loss gradient is the mean of
      E evaluations of the model, for a source whose output is random (a defended model with a
      randomised input transform draws anew at each evaluation).
    """

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
    ti_kernel: int = 0
    scales: int = 1
    nesterov: bool = False
    variance_samples: int = 0
    variance_bound: float = 1.5
    eot_samples: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise WorkflowError(
                f"Unknown attack method '{self.method}'; use one of {', '.join(METHODS)}."
            )
        if self.norm not in NORMS:
            raise WorkflowError(
                f"Unknown attack norm '{self.norm}'; use one of {', '.join(NORMS)}."
            )
        unit = _unit(self.norm)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise WorkflowError(f"Attack eps must be > 0 ({unit} units), got {self.eps}.")
        if self.steps < 1 or self.restarts < 1:
            raise WorkflowError(
                f"Attack steps and restarts must be >= 1, got steps={self.steps}, "
                f"restarts={self.restarts}."
            )
        if self.method == "pgd":
            if not (self.step > 0 and math.isfinite(self.step)):
                raise WorkflowError(f"Attack step must be > 0 ({unit} units), got {self.step}.")
            if self.steps > 1 and self.step > self.eps:
                raise WorkflowError(
                    f"Attack step {self.step} is larger than eps {self.eps} ({unit} units) for "
                    f"an iterative attack with {self.steps} steps; use step <= eps "
                    "(e.g. step_fraction: 0.25)."
                )
            if not self.random_start and self.steps < steps_to_reach(self.eps, self.step):
                raise WorkflowError(
                    f"Attack steps x step = {self.steps} x {self.step:g} = "
                    f"{self.steps * self.step:g} is below eps {self.eps:g} ({unit} units): the "
                    "attack cannot reach the budget its label says; give more steps or a larger "
                    "step (or random_start: true)."
                )
        if self.momentum < 0:
            raise WorkflowError(f"Attack momentum must be >= 0, got {self.momentum}.")
        if self.method == "fgsm" and (self.momentum or self.restarts > 1):
            raise WorkflowError("Attack momentum and restarts need method: pgd (FGSM is one step).")
        if not 0 <= self.diversity_prob <= 1:
            raise WorkflowError(f"diversity_prob must be in [0, 1], got {self.diversity_prob}.")
        if self.diversity_scale < 1:
            raise WorkflowError(f"diversity_scale must be >= 1, got {self.diversity_scale}.")
        if self.ti_kernel < 0 or (self.ti_kernel > 1 and self.ti_kernel % 2 == 0):
            raise WorkflowError(
                f"ti_kernel must be 0 or 1 (off) or an odd kernel size >= 3 (TI-FGSM's Gaussian "
                f"kernel is centred on a pixel), got {self.ti_kernel}."
            )
        if self.ti_kernel > 1:
            centre = float(ti_kernel_weights(self.ti_kernel).max())
            if centre > TI_MAX_CENTRE_WEIGHT:
                raise WorkflowError(
                    f"ti_kernel {self.ti_kernel} does not smooth: its Gaussian (nsig 3) puts "
                    f"{centre:.3f} of its weight on the centre pixel (more than "
                    f"{TI_MAX_CENTRE_WEIGHT}), so the attack would be the plain one under another "
                    "name; use 5 or more (5 at 48-64 px, 7 at 224 px, the paper's 15 at 299 px)."
                )
        if not 1 <= self.scales <= 16:
            raise WorkflowError(
                f"scales must be in 1..16 (SI-FGSM copies x / 2^i, i < scales; 1 = off, the "
                f"paper 5; x / 2^16 is already black), got {self.scales}."
            )
        if self.nesterov and not self.momentum > 0:
            raise WorkflowError(
                "nesterov: true needs momentum > 0 (NI-FGSM looks ahead along the momentum; "
                "the papers use momentum 1.0)."
            )
        if self.nesterov and self.norm != "linf":
            raise WorkflowError(
                "nesterov: true is implemented for norm: linf only (the look-ahead "
                "x + step * momentum * g of Lin et al. is defined for sign steps)."
            )
        if self.variance_samples < 0:
            raise WorkflowError(
                f"variance_samples must be >= 0 (0 = off), got {self.variance_samples}."
            )
        if self.variance_samples > 0 and self.method != "pgd":
            raise WorkflowError(
                "variance_samples needs method: pgd (VMI-FGSM tunes each step with the "
                "previous step's variance; FGSM is one step)."
            )
        if self.eot_samples < 1:
            raise WorkflowError(f"eot_samples must be >= 1 (1 = off), got {self.eot_samples}.")
        if not (self.variance_bound > 0 and math.isfinite(self.variance_bound)):
            raise WorkflowError(
                f"variance_bound must be > 0 (the VMI neighbourhood radius is variance_bound * "
                f"eps), got {self.variance_bound}."
            )

    @property
    def runs(self) -> int:
        """Restarts actually run: without random start, DI or VMI every restart is the same
        deterministic run, done once."""
        random = self.random_start or self.diversity_prob > 0 or self.variance_samples > 0
        return int(self.restarts) if random else 1

    @property
    def gradients_per_step(self) -> int:
        """Loss gradients per step and image: scales * (1 + variance_samples), each of them
        the mean of ``eot_samples`` evaluations (see ``cost_per_step``)."""
        return int(self.scales) * (1 + int(self.variance_samples))

    @property
    def cost_per_step(self) -> int:
        """Forward+backward passes per step and image."""
        return self.gradients_per_step * int(self.eot_samples)

    @property
    def iterations(self) -> int:
        return 1 if self.method == "fgsm" else int(self.steps)

    @property
    def step_size(self) -> float:
        """Step actually used, in the units of eps (FGSM: eps)."""
        return float(self.eps) if self.method == "fgsm" else float(self.step)

    @property
    def eps_unit(self) -> str:
        """Unit of eps and step: "1/255" (linf) or "L2, [0,1] pixels" (l2)."""
        return _unit(self.norm)

    @property
    def eps_float(self) -> float:
        """eps in [0, 1] pixel units (linf: eps / 255; l2: eps)."""
        return float(self.eps) / 255.0 if self.norm == "linf" else float(self.eps)

    @property
    def step_float(self) -> float:
        """Step actually used, in [0, 1] pixel units."""
        return self.step_size / 255.0 if self.norm == "linf" else self.step_size

    def attrs(self) -> dict:
        """Plain python scalars for HDF5 attributes (step/steps as actually used)."""
        return {
            "method": str(self.method),
            "norm": str(self.norm),
            "eps": float(self.eps),
            "eps_unit": self.eps_unit,  # also the unit of step
            "step": self.step_size,
            "steps": self.iterations,
            "targeted": bool(self.targeted),
            "random_start": bool(self.random_start),
            "restarts": int(self.restarts),
            "momentum": float(self.momentum),
            "diversity_prob": float(self.diversity_prob),
            "diversity_scale": float(self.diversity_scale),
            "seed": int(self.seed),
            "ti_kernel": int(self.ti_kernel),
            "scales": int(self.scales),
            "nesterov": bool(self.nesterov),
            "variance_samples": int(self.variance_samples),
            "variance_bound": float(self.variance_bound),
            "eot_samples": int(self.eot_samples),
        }

    def stream_seed(self, *keys) -> tuple[int, int]:
        """Seed of one random stream of this attack: ``stream_seed(seed, <config>, *keys)``.

        The configuration (every attribute, e.g. eps, but the seed and the number of restarts)
        is part of the key, so attacks differing in anything draw independent numbers, while
        restart r draws the same numbers whatever the number of restarts (more restarts never
        give a weaker example). The transfer settings added later (``ti_kernel``, ``scales``,
        ``nesterov``, ``variance_samples``, ``variance_bound``) are part of it only when on, so
        attacks without them keep the streams they had before.
        """
        cfg = {
            k: v
            for k, v in self.attrs().items()
            if k not in ("seed", "restarts") and not (k in _NEW_KEYS_OFF and _NEW_KEYS_OFF[k](self))
        }
        return stream_seed(self.seed, json.dumps(cfg, sort_keys=True), *keys)


def _plain(key):
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, str | bool | int | float):
        return key
    raise WorkflowError(f"Random stream keys must be str/int/float/bool, got {type(key)!r}.")


def stream_seed(attack_seed: int, *keys) -> tuple[int, int]:
    """Stateless RNG seed (two signed int64) for the stream named by ``(attack_seed, *keys)``.

    A pure function: sha256 of the JSON list ``[attack_seed, *keys]`` (keys: str/int/float/bool,
    e.g. source model, data task, shard, batch index). Different keys give independent Philox
    streams; the same keys give the same numbers on every run and machine.
    """
    payload = json.dumps([_plain(int(attack_seed)), *map(_plain, keys)], separators=(",", ":"))
    h = hashlib.sha256(payload.encode()).digest()
    return (
        int.from_bytes(h[:8], "little", signed=True),
        int.from_bytes(h[8:16], "little", signed=True),
    )


def spec_from_config(attack_cfg: dict, eps: float) -> AttackSpec:
    """Build an AttackSpec from one entry of the config's ``attacks:`` mapping and an eps
    (1/255 units for linf, L2 norm in [0, 1] pixel units for l2; see AttackSpec)."""
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
        unit = _unit(str(cfg.get("norm", "linf")))
        raise WorkflowError(f"Attack eps must be > 0 ({unit} units), got {eps}.")
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
        ("ti_kernel", int),
        ("scales", int),
        ("nesterov", bool),
        ("variance_samples", int),
        ("variance_bound", float),
        ("eot_samples", int),
    ):
        if key in cfg:
            kwargs[key] = typ(cfg[key])
    return AttackSpec(method=str(method), eps=eps, step=step, **kwargs)


# --- building blocks (TF; images are (..., H, W, C), norms are per image) -----------------


def cross_entropy(y, probs):
    """Per-example cross-entropy -log p_y of softmax outputs ``probs`` (N, K), labels y (N,).

    Computed as log1p(sum_{k!=y} p_k / p_y) where p_y >= 1/2: the same value as Keras' sparse
    categorical crossentropy on probabilities, but its gradient survives when p_y rounds to 1
    in float32. Where p_y < 1/2 it is log(p_y + p_other) - log(p_y): the ratio's gradient
    p_other / p_y^2 would overflow float32 for p_y below about 1e-19 (a look-ahead point of
    NI-FGSM far outside the image range reaches that) and turn the step into NaN. Each branch
    is finite everywhere, so ``tf.where`` passes no NaN gradient from the other.
    """
    import tensorflow as tf

    probs = tf.cast(probs, tf.float32)
    p_y = tf.gather(probs, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    p_other = tf.reduce_sum(probs, axis=1) - p_y
    p_other = tf.maximum(p_other, 0.0)
    confident = tf.math.log1p(p_other / tf.maximum(p_y, 0.5))
    wrong = tf.math.log(tf.maximum(p_y + p_other, 1e-30)) - tf.math.log(tf.maximum(p_y, 1e-30))
    return tf.where(p_y >= 0.5, confident, wrong)


def _l2(t):
    """Per-image L2 norm over the last three axes, kept for broadcasting."""
    import tensorflow as tf

    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[-3, -2, -1], keepdims=True))


def clip_eta(eta, norm: str, eps: float):
    """Project perturbations ``eta`` (..., H, W, C) onto the ``norm`` ball of radius ``eps``
    ([0, 1] pixel units): clip each pixel (linf) or rescale images longer than eps (l2)."""
    import tensorflow as tf

    if norm == "linf":
        return tf.clip_by_value(eta, -eps, eps)
    if norm == "l2":
        return eta * tf.minimum(1.0, tf.math.divide_no_nan(tf.constant(eps, eta.dtype), _l2(eta)))
    raise WorkflowError(f"Unknown norm '{norm}'.")


def optimize_linear(grad, norm: str):
    """Unit-``norm`` direction maximising <grad, d>: sign(grad) (linf), grad / ||grad||_2 (l2)."""
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

    l1 = tf.reduce_mean(tf.abs(grad), axis=[-3, -2, -1], keepdims=True)
    return mu * g + tf.math.divide_no_nan(grad, l1)


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


def loss_gradient(model, x, y, transform=None):
    """Gradient w.r.t. ``x`` of the summed cross-entropy of labels ``y`` at
    ``model(transform(x))`` (``transform`` e.g. a DI transform; None: identity)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        x_in = transform(x) if transform is not None else x
        loss = tf.reduce_sum(cross_entropy(y, model(x_in, training=False)))
    return tape.gradient(loss, x)


def ti_kernel_weights(size: int, nsig: float = 3.0) -> np.ndarray:
    """TI-FGSM's Gaussian kernel, float32 (size, size) summing to 1: the authors' ``gkern``
    (x = linspace(-nsig, nsig, size), the outer product of the normal pdf at x, normalised).
    Size 1 is the identity [[1]]."""
    if size < 1 or size % 2 == 0:
        raise WorkflowError(f"ti_kernel must be an odd size >= 1, got {size}.")
    x = np.linspace(-nsig, nsig, int(size))
    k1 = np.exp(-0.5 * x**2)  # the normal pdf up to its constant, which the sum divides out
    k = np.outer(k1, k1)
    return (k / k.sum()).astype(np.float32)


def smooth_gradient(grad, kernel):
    """TI-FGSM: convolve each channel of ``grad`` (N, H, W, C) with ``kernel`` (k, k)
    (depthwise, stride 1, SAME zero padding; the kernel is symmetric, so convolution and
    correlation agree)."""
    import tensorflow as tf

    c = int(grad.shape[-1])
    w = tf.tile(tf.constant(np.asarray(kernel, np.float32))[:, :, None, None], [1, 1, c, 1])
    return tf.nn.depthwise_conv2d(grad, w, strides=[1, 1, 1, 1], padding="SAME")


def variance_seeds(seed, runs: int, steps: int, samples: int):
    """Stateless seeds, int32 (runs, steps, samples, 2), of the VMI neighbours of one call with
    stateless seed ``seed``: sample j of step i of restart r is
    ``random_lp_vector(shape, norm, variance_bound * eps, seeds[r, i, j])``. int32 so they can
    be used inside an XLA cluster (drawn there, one neighbour at a time, instead of holding
    runs x steps x samples images)."""
    import tensorflow as tf

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
    import tensorflow as tf

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


# --- the attack -------------------------------------------------------------------------


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
    import tensorflow as tf

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


# --- storage ----------------------------------------------------------------------------


def l2_budget_sq(eps: float) -> int:
    """L2 budget of a uint8 perturbation in squared grey levels: the largest integer S with
    sqrt(S) / 255 <= eps (computed exactly on rationals, with the same 1e-9 relative slack as
    floor(eps + 1e-9) for linf, so eps = k / 255 written in floating point admits norm k)."""
    return math.floor((Fraction(float(eps)) * 255 * (1 + Fraction(1, 10**9))) ** 2)


def within_budget(clean_u8: np.ndarray, adv_u8: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """Per image: is the stored integer perturbation inside the budget? (exact integer check:
    linf |d| <= floor(eps); l2 sum d^2 <= l2_budget_sq(eps), d in grey levels)."""
    d = np.asarray(adv_u8).astype(np.int64) - np.asarray(clean_u8).astype(np.int64)
    d = d.reshape(len(d), -1)
    if spec.norm == "linf":
        return np.abs(d).max(axis=1, initial=0) <= math.floor(spec.eps + 1e-9)
    return np.sum(d * d, axis=1) <= l2_budget_sq(spec.eps)


def _shrink_l2(d: np.ndarray, v: np.ndarray, budget: int) -> np.ndarray:
    """Integer vector near ``v`` with sum d^2 <= budget, from the rounding ``d`` = rint(v).

    Greedy: move entries one grey level toward zero, cheapest first, where the cost is the
    increase of the squared error to v, (1 - 2 e) with e = |d| - |v|, per unit of budget freed,
    2|d| - 1. Then, for float edge cases, shrink the largest entries until inside.
    """
    d = d.copy()
    need = int(np.sum(d * d)) - budget
    if need <= 0:
        return d
    nz = np.flatnonzero(d)
    a = np.abs(d[nz])
    gain = 2 * a - 1
    cost = (1.0 - 2.0 * (a - np.abs(v[nz]))) / gain
    order = np.argsort(cost, kind="stable")
    k = int(np.searchsorted(np.cumsum(gain[order]), need)) + 1
    pick = nz[order[:k]]
    d[pick] -= np.sign(d[pick])
    while np.sum(d * d) > budget:
        j = np.argmax(np.abs(d))
        d[j] -= np.sign(d[j])
    return d


def quantise(x_clean_u8: np.ndarray, x_adv: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """Round adversarial images to uint8 (N, H, W) keeping the integer perturbation in budget.

    linf: nearest integer, clipped to floor(eps) grey levels. l2: nearest integer; an image
    whose rounded perturbation leaves the ball is shrunk greedily toward the clean image, one
    grey level at a time where that costs least, until sum d^2 <= l2_budget_sq(eps) (so the
    stored perturbation stays as close as possible to the attack's).
    """
    clean = np.asarray(x_clean_u8)
    if clean.ndim == 4:
        clean = clean[..., 0]
    adv = np.asarray(x_adv, dtype=np.float64)
    if adv.ndim == 4:
        adv = adv[..., 0]
    if clean.shape != adv.shape:
        raise WorkflowError(f"quantise: clean {clean.shape} and adversarial {adv.shape} differ.")
    bad = ~np.isfinite(adv).reshape(len(adv), -1).all(axis=1)
    if bad.any():  # NaN would round to an in-budget perturbation that the attack never found
        raise WorkflowError(
            f"The attack returned non-finite pixels for {int(bad.sum())} of {len(adv)} images "
            "(a NaN or infinite loss gradient, e.g. the source's output overflowing at a "
            "look-ahead point). Nothing was stored; try a smaller step or momentum for this "
            "attack, and report it if it persists."
        )
    c = clean.astype(np.int64)
    v = np.clip(adv, 0.0, 1.0) * 255.0 - c  # real perturbation in grey levels
    d = np.rint(v).astype(np.int64)
    if spec.norm == "linf":
        b = math.floor(spec.eps + 1e-9)
        d = np.clip(d, -b, b)
    else:
        budget = l2_budget_sq(spec.eps)
        for i in np.flatnonzero(np.sum((d * d).reshape(len(d), -1), axis=1) > budget):
            d[i] = _shrink_l2(d[i].reshape(-1), v[i].reshape(-1), budget).reshape(d[i].shape)
    return np.clip(c + d, 0, 255).astype(np.uint8)


def run_attack_batches(
    model,
    attack_fn,
    images_u8: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    batch_size: int,
    progress=None,
    *,
    stream: tuple = (),
    predict_fn=None,
) -> dict:
    """Attack ``images_u8`` (N, H, W) uint8 in batches; quantise; report probabilities/norms.

    ``stream``: keys naming this job's random stream, e.g. (source model, data task, shard);
    batch ``i`` (0-based, of ``batch_size`` images) is attacked with
    ``spec.stream_seed(*stream, i)``. ``predict_fn``: ``inference.make_predict_fn(model,
    input_dtype="float32")`` to reuse a traced one. Returns ``adv_u8`` (N, H, W) uint8 and
    float32 (N,) ``clean_prob``, ``adv_prob_float`` (unquantised), ``adv_prob`` (stored),
    ``l2``, ``linf`` (stored perturbation, [0, 1] units).
    """
    from cxrtransfer.models.inference import make_predict_fn

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
    own = getattr(attack_fn, "spec", spec)
    if own != spec:
        raise WorkflowError(f"run_attack_batches: attack built for {own}, given spec {spec}.")
    stream = tuple(stream)
    n = len(images_u8)
    prob = predict_fn or make_predict_fn(model, input_dtype="float32")
    out = {
        "adv_u8": np.zeros_like(images_u8),
        "clean_prob": np.zeros(n, np.float32),
        "adv_prob_float": np.zeros(n, np.float32),
        "adv_prob": np.zeros(n, np.float32),
        "l2": np.zeros(n, np.float32),
        "linf": np.zeros(n, np.float32),
    }
    for i, a in enumerate(range(0, n, batch_size)):
        b = min(a + batch_size, n)
        clean_u8 = images_u8[a:b]
        x = clean_u8[..., None].astype(np.float32) / 255.0
        seed = spec.stream_seed(*stream, i)
        x_adv = np.asarray(attack_fn(x, labels[a:b].astype(np.int32), seed))
        adv_u8 = quantise(clean_u8, x_adv, spec)
        xq = adv_u8[..., None].astype(np.float32) / 255.0
        p = np.asarray(prob(np.concatenate([x, x_adv.astype(np.float32), xq])))
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
