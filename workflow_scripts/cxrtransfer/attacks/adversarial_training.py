"""Adversarial training (``training.adversarial``): PGD adversarial training (Madry et al. 2018)
and TRADES (Zhang et al. 2019), crafted with the study's own attack code.

Every training batch gets adversarial examples crafted against the current weights, in the
pixel space of the model contract ([0, 1]), L-inf, eps in 1/255 units:

- ``pgd``: the first ``fraction`` of the batch is replaced by PGD examples (``attacks.make_attack``,
  the compiled attack the study evaluates with: untargeted, ``steps`` steps of
  ``step_fraction * eps``, optional uniform random start, projected onto the eps box and
  clipped to [0, 1]) and the loss is the compiled cross-entropy of the mixed batch
  (``fraction: 1`` is Madry et al.'s all-adversarial training);
- ``trades``: for the first ``fraction`` of the batch, x_adv maximises KL(p(x) || p(x_adv))
  (the paper's inner maximisation: start at x + 0.001 N(0, 1), sign steps projected like PGD,
  with ``attacks.clip_eta`` / ``attacks.optimize_linear``), and the loss is
  CE(y, p(x)) + ``trades_beta`` * KL(p(x) || p(x_adv)) (``trades_loss``).

Examples are crafted with the model in inference mode (as the attacks and the papers' code do)
and trained on in training mode. The random numbers come from stateless streams: step ``t``
of a model with seed ``s`` uses ``fold_in(spec.stream_seed("adversarial_training", s), t)``,
so seeded runs repeat and a resumed run crafts what the uninterrupted one would have.

``AdversarialTrainer`` wraps the contract model in a ``keras.Model`` with this train step; it
exposes the wrapped model as ``contract_model``, which is what the training callbacks
evaluate and save (standard layers only: ``model.keras`` keeps the model contract).

Robust validation (``make_val_attack``): each epoch, and for the base model an adversarially
trained model must beat, the validation images are attacked by L-inf PGD at the training eps
against the weights being evaluated: ``val_steps`` steps of eps/4, no random start (so the
examples are a pure function of the model and the images; the stream seed is fixed all the
same). The same spec attacks the model and its base.

``cxrtransfer.models.train`` imports this module by name, for adversarially trained models only, so
the code version of clean training (``plan.code_version`` of the train script) does not cover
it or the attack code: an edit of ``attacks.py`` retrains adversarially trained models only,
through ``code_version()`` (the train rule's code param, rules/common.smk train_code).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.iterative import make_attack
from cxrtransfer.attacks.spec import AttackSpec
from cxrtransfer.attacks.spec import spec_from_config as attack_spec_from_config
from cxrtransfer.attacks.steps import clip_eta, cross_entropy, optimize_linear
from cxrtransfer.config.schema import defaults as schema_defaults

# The schema's defaults (one place) of the keys of training.adversarial.
ADVERSARIAL_DEFAULTS = schema_defaults("training", "adversarial")
METHODS = ("pgd", "trades")
TRADES_START_STD = 0.001  # the TRADES code's start x + 0.001 N(0, 1) (the KL gradient is 0 at x)
VAL_STEP_FRACTION = 0.25  # robust validation: steps of eps/4


def adversarial_settings(adv: dict) -> dict:
    """``training.adversarial`` with the schema's defaults filled in and checked."""
    s = {**ADVERSARIAL_DEFAULTS, **adv}
    if "eps" not in s:
        raise WorkflowError("training.adversarial needs eps (L-inf budget in 1/255 units).")
    if not 0 < float(s["eps"]) <= 255:
        raise WorkflowError(
            f"training.adversarial.eps: {s['eps']} is outside the data range (0, 255] "
            "(1/255 units)."
        )
    if s["method"] not in METHODS:
        raise WorkflowError(
            f"training.adversarial.method: '{s['method']}' is not one of {', '.join(METHODS)}."
        )
    if not 0 <= float(s["fraction"]) <= 1:
        raise WorkflowError(f"training.adversarial.fraction: {s['fraction']} is not in [0, 1].")
    return s


def spec_from_settings(adv: dict) -> AttackSpec:
    """The PGD (L-inf, untargeted) of adversarial training as an ``AttackSpec``."""
    s = adversarial_settings(adv)
    cfg = {
        "method": "pgd",
        "norm": "linf",
        "steps": int(s["steps"]),
        "step_fraction": float(s["step_fraction"]),
        "random_start": bool(s["random_start"]),
        "seed": int(s["seed"]),
    }
    return attack_spec_from_config(cfg, float(s["eps"]))


def val_spec(adv: dict) -> AttackSpec:
    """The PGD of robust validation: L-inf, untargeted, at the training eps, ``val_steps`` steps
    of eps/4, no random start."""
    s = adversarial_settings(adv)
    cfg = {
        "method": "pgd",
        "norm": "linf",
        "steps": int(s["val_steps"]),
        "step_fraction": VAL_STEP_FRACTION,
        "random_start": False,
        "seed": int(s["seed"]),
    }
    return attack_spec_from_config(cfg, float(s["eps"]))


def make_val_attack(model, adv: dict):
    """``attack(x, y) -> x_adv``: the robust validation's examples against ``model`` (x float32
    (N, H, W, 1) in [0, 1], y int labels (N,)), the study's compiled PGD (``val_spec``) with a
    fixed stream seed, so every call on the same weights and images gives the same examples.
    ``attack.rule`` describes it (recorded in metrics.json)."""
    spec = val_spec(adv)
    pgd = make_attack(model, spec)
    seed = spec.stream_seed("robust_validation")

    def attack(x, y):
        return pgd(x, y, seed)

    attack.rule = {
        "attack": "pgd",
        "norm": "linf",
        "eps": spec.eps,
        "steps": spec.iterations,
        "step": spec.step,
        "step_fraction": VAL_STEP_FRACTION,
        "random_start": False,
        "targeted": False,
        "images": "the validation split",
        "against": "the weights evaluated (white-box)",
    }
    return attack


def n_adversarial(batch, fraction: float):
    """How many examples of a batch of ``batch`` get adversarial counterparts: round(fraction *
    batch), halves up (int32 tensor)."""
    n = tf.cast(batch, tf.float32)
    return tf.cast(tf.floor(float(fraction) * n + 0.5), tf.int32)


def kl_divergence(p, q):
    """Per-example KL(p || q) of softmax outputs (N, K), sum_c p_c (log p_c - log q_c), with the
    logs of ``attacks.cross_entropy`` (whose gradients survive probabilities that round to 1)."""
    p = tf.cast(p, tf.float32)
    q = tf.cast(q, tf.float32)
    total = tf.zeros(tf.shape(p)[:1])
    for c in range(int(p.shape[-1])):
        label = tf.fill(tf.shape(p)[:1], c)
        total += p[:, c] * (cross_entropy(label, q) - cross_entropy(label, p))
    return total


def _weighted_mean(values, weights):
    """sum_i w_i v_i / N (Keras' "sum over batch size"; 0 for no rows)."""
    if weights is not None:
        values = values * tf.cast(weights, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), values.dtype))


def trades_loss(y, p_clean, p_adv, beta: float, sample_weight=None):
    """TRADES' objective: mean_i w_i CE(y_i, p_clean_i) + beta * mean_{i<k} w_i KL(p_clean_i ||
    p_adv_i), with k = len(p_adv) (the adversarial examples belong to the first k rows; the
    paper: k = N). Means over the rows (Keras' "sum over batch size"); w the sample weights
    (class weights), all 1 without them."""
    k = tf.shape(p_adv)[0]
    ce = cross_entropy(y, p_clean)
    kl = kl_divergence(p_clean[:k], p_adv)
    w = None if sample_weight is None else tf.reshape(sample_weight, [-1])
    return _weighted_mean(ce, w) + float(beta) * _weighted_mean(kl, None if w is None else w[:k])


def make_crafter(model, adv: dict):
    """``craft(x, y, seed) -> x_adv``: the adversarial examples of adversarial training against
    ``model`` (x float32 (N, H, W, 1) in [0, 1], y int labels (N,), seed stateless (2,) int64).
    pgd: the study's compiled PGD (``attacks.make_attack``); trades: the KL-maximising sign
    steps of the TRADES paper, projected with ``attacks.clip_eta``."""
    s = adversarial_settings(adv)
    spec = spec_from_settings(s)
    if s["method"] == "pgd":
        return make_attack(model, spec).graph
    eps, step, steps = spec.eps_float, spec.step_float, spec.iterations
    shape = tuple(model.input_shape[1:])

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((2,), tf.int64),
        ]
    )
    def trades_attack(x, y, seed):
        del y  # the KL objective does not use the labels
        p_clean = tf.stop_gradient(model(x, training=False))
        noise = tf.random.stateless_normal(tf.shape(x), seed, alg="philox")
        x_adv = tf.clip_by_value(x + TRADES_START_STD * noise, 0.0, 1.0)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                kl = tf.reduce_sum(kl_divergence(p_clean, model(x_adv, training=False)))
            grad = tape.gradient(kl, x_adv)
            eta = clip_eta(x_adv + step * optimize_linear(grad, "linf") - x, "linf", eps)
            x_adv = tf.clip_by_value(x + eta, 0.0, 1.0)
        return x_adv

    return trades_attack


def step_seed(base_seed, step):
    """The stateless seed (2,) int64 of training step ``step`` from the model's base seed."""
    return tf.random.experimental.stateless_fold_in(
        tf.convert_to_tensor(base_seed, tf.int64), tf.cast(step, tf.int64)
    )


def adversarial_batch(craft, x, y, fraction: float, seed):
    """(x_mix, k): the batch whose first k = round(fraction * N) images are replaced by
    ``craft``'s adversarial examples (the rest unchanged)."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    k = n_adversarial(tf.shape(x)[0], fraction)
    x_adv = craft(x[:k], y[:k], tf.convert_to_tensor(seed, tf.int64))
    return tf.concat([x_adv, x[k:]], axis=0), k


def base_seed(adv: dict, model_seed: int) -> tuple[int, int]:
    """The stream of a model's adversarial training: its attack spec's, keyed by the model's
    seed (models with the same settings and other seeds draw other numbers)."""
    return spec_from_settings(adv).stream_seed("adversarial_training", int(model_seed))


def make_trainer(model, adv: dict, model_seed: int):
    """A ``keras.Model`` that trains ``model`` (the contract model) adversarially with
    ``model.fit``: call it like ``model``; ``contract_model`` is ``model`` (save that)."""
    s = adversarial_settings(adv)
    method, fraction, beta = s["method"], float(s["fraction"]), float(s["trades_beta"])
    seed0 = base_seed(s, model_seed)

    class AdversarialTrainer(keras.Model):
        def __init__(self, inner):
            super().__init__(name=f"adversarial_{inner.name}")
            self.inner = inner
            self._craft = make_crafter(inner, s)

        @property
        def contract_model(self):
            return self.inner

        def call(self, x, training=False):
            return self.inner(x, training=training)

        def train_step(self, data):
            # Keras 3's custom train_step with the TensorFlow backend (keras.io guide
            # "Customizing what happens in fit() with TensorFlow"); sample_weight carries
            # fit's class weights.
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            seed = step_seed(seed0, self.optimizer.iterations)
            y = tf.cast(tf.reshape(y, [-1]), tf.int32)
            # crafted before the tape: the loss is differentiated at the examples, not
            # through the attack that found them
            if method == "pgd":
                x_train, _ = adversarial_batch(self._craft, x, y, fraction, seed)
            else:
                k = n_adversarial(tf.shape(x)[0], fraction)
                x_train = self._craft(x[:k], y[:k], seed)  # the first k, paired with them
            x_train = tf.stop_gradient(x_train)
            with tf.GradientTape() as tape:
                if method == "pgd":
                    y_pred = self.inner(x_train, training=True)
                    loss = self.compute_loss(
                        x=x_train, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                    )
                else:
                    y_pred = self.inner(x, training=True)
                    p_adv = self.inner(x_train, training=True)
                    loss = trades_loss(y, y_pred, p_adv, beta, sample_weight)
                    for extra in self.losses:  # regularisation losses, as compute_loss adds
                        loss += tf.reduce_sum(tf.cast(extra, loss.dtype))
            weights = self.trainable_variables
            self.optimizer.apply(tape.gradient(loss, weights), weights)
            for metric in self.metrics:
                if metric.name == "loss":  # weighted by batch size, as Keras' own train_step
                    metric.update_state(loss, sample_weight=tf.shape(x)[0])
            return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    trainer = AdversarialTrainer(model)
    shape = tuple(model.input_shape[1:])
    trainer(tf.zeros((1, *shape), tf.float32))  # built, as BackupAndRestore requires
    return trainer
