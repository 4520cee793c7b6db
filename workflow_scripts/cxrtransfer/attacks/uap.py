"""Universal adversarial perturbations (UAP): one L-inf perturbation per source model.

Crafted by stochastic gradient ascent over minibatches of the source's *training or validation*
images (Shafahi et al. 2020, "Universal adversarial training", Algorithm 1: the gradient of the
mean clamped cross-entropy with respect to the one perturbation, a signed step, projection
onto the eps ball), never on test images. Crafting counts optimiser steps (one minibatch
each), not passes over the images: on a small crafting set a pass is one step, and a few
signed steps of eps/10 cannot reach eps. A perturbation whose largest entry stays more than
one grey level below its label's eps fails the job (``attack_cache.check_reached``). Stored
as integer grey levels, so adding it to a uint8 image gives exactly the evaluated image; then applied to any data task's test set as an
adversarial set (``attack_job``), evaluated on every target like the other sets.

Config (one entry of ``attacks:``)::

    uap: {method: uap, split: val, steps: 40, step_fraction: 0.1}
    uap_df: {method: uap, algorithm: deepfool, split: val, delta: 0.2, max_passes: 10}

``steps`` defaults to ``default_steps(eps, step)`` = 4 x ceil(eps / step).

``algorithm: deepfool`` (``cxrtransfer.attacks.uap_deepfool``) crafts it instead by the
DeepFool-based Algorithm 1 of Moosavi-Dezfooli et al. 2017 (passes adding each unfooled image's
minimal perturbation, projected onto the eps ball, until the fooling rate reaches 1 - delta or
after ``max_passes``). The default ``algorithm: sgd`` keeps the settings, files and random
streams the method had before: the DeepFool settings (``DEEPFOOL_KEYS``) are recorded only
when on, as ``attacks.spec`` keeps the per-image attacks' streams (``_NEW_KEYS_OFF``); a file
without ``algorithm`` is an sgd one.

Units as for the other L-inf attacks: eps and step in 1/255 units.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.parameters import (
    ATTACKS,
    PARAMETERS,
    check_keys,
    check_value,
    schema_filled,
)
from cxrtransfer.attacks.spec import step_from_entry, steps_to_reach
from cxrtransfer.core.files import FIX_DAMAGED, atomic_path, file_sha256
from cxrtransfer.core.logs import LOG, Progress
from cxrtransfer.core.provenance import model_record
from cxrtransfer.metrics.measures import flip_rate
from cxrtransfer.models.checkpoints import load_checkpoint

METHOD = "uap"
SPLITS = ("train", "val")
_DEFAULT = ATTACKS[METHOD].defaults  # declared in attacks.parameters
ALGORITHMS = ("sgd", "deepfool")
# the settings of one algorithm only: given for the other, they are refused (not ignored)
SGD_KEYS = ("step", "step_fraction", "steps", "loss_clamp")
DEEPFOOL_KEYS = ("algorithm", "delta", "max_passes", "overshoot", "deepfool_steps")


@dataclass(frozen=True)
class UapSpec:
    """One UAP configuration: eps and step in 1/255 units (L-inf only)."""

    eps: float
    step: float
    steps: int
    split: str = _DEFAULT["split"]
    max_images: int = _DEFAULT["max_images"]  # 0: every image of the split
    loss_clamp: float = _DEFAULT["loss_clamp"]
    seed: int = _DEFAULT["seed"]
    method: str = METHOD
    norm: str = _DEFAULT["norm"]
    algorithm: str = _DEFAULT["algorithm"]
    delta: float = _DEFAULT["delta"]
    max_passes: int = _DEFAULT["max_passes"]
    overshoot: float = _DEFAULT["overshoot"]
    deepfool_steps: int = _DEFAULT["deepfool_steps"]

    def __post_init__(self):
        for name in ("norm", "steps", "max_images", "loss_clamp", "seed", *DEEPFOOL_KEYS):
            check_value(name, getattr(self, name))  # within the declared bounds
        if self.norm != "linf":
            raise WorkflowError(
                f"norm: a universal perturbation is crafted in L-inf here, got '{self.norm}'."
            )
        if self.split not in SPLITS:
            raise WorkflowError(
                f"split: a universal perturbation is crafted on the source's 'train' or 'val' "
                f"images, never on '{self.split}' (the test images it is evaluated on)."
            )
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise WorkflowError(f"eps must be > 0 (1/255 units), got {self.eps}.")
        if self.algorithm == "deepfool":
            return  # DeepFool takes no step: its passes stop by the fooling rate or max_passes
        if not (0 < self.step <= self.eps):
            raise WorkflowError(f"step must be in (0, eps] (1/255 units), got {self.step}.")
        if self.steps < steps_to_reach(self.eps, self.step):
            raise WorkflowError(
                f"steps: {self.steps} signed steps of {self.step:g}/255 cannot reach eps "
                f"{self.eps:g}/255; give at least {steps_to_reach(self.eps, self.step)} (the "
                f"default is {default_steps(self.eps, self.step)})."
            )

    @property
    def eps_float(self) -> float:
        return float(self.eps) / 255.0

    @property
    def step_float(self) -> float:
        return float(self.step) / 255.0

    @property
    def eps_unit(self) -> str:
        return "1/255"

    @property
    def levels(self) -> int:
        """Largest stored perturbation in grey levels."""
        return math.floor(self.eps + 1e-9)

    @property
    def is_deepfool(self) -> bool:
        return self.algorithm == "deepfool"

    def attrs(self) -> dict:
        """The settings the crafting used: sgd's as before the DeepFool ones existed, or
        deepfool's (without sgd's step, steps and loss_clamp, which it does not use)."""
        drop = SGD_KEYS if self.is_deepfool else DEEPFOOL_KEYS
        return {
            **{k: v for k, v in asdict(self).items() if k not in drop},
            "eps_unit": self.eps_unit,
        }


def default_steps(eps: float, step: float) -> int:
    """A uap's default number of optimiser steps: four times the steps a constant gradient
    sign needs to reach eps, whatever the crafting set's size."""
    return 4 * steps_to_reach(eps, step)


def is_uap(attack_cfg: dict) -> bool:
    return attack_cfg.get("method") == METHOD


def uap_spec_from_config(attack_cfg: dict, eps: float) -> UapSpec:
    """Build a UapSpec from one ``method: uap`` entry of the config's ``attacks:`` mapping and
    an eps (1/255 units)."""
    # The schema fills in the per-image attacks' defaults for every attack: those mean nothing
    # here and are dropped; any other value of a per-image setting is refused.
    filled = schema_filled()
    cfg = {
        k: v
        for k, v in attack_cfg.items()
        if k in ATTACKS[METHOD].keys or filled.get(k, object()) != v
    }
    cfg.pop("method", None)
    check_keys(METHOD, cfg)
    for key, value in cfg.items():
        check_value(key, value)
    _check_algorithm_keys(cfg)
    eps = float(eps)
    step = step_from_entry(cfg, eps, _DEFAULT["step_fraction"])
    return UapSpec(
        eps=eps,
        step=step,
        steps=int(cfg["steps"]) if "steps" in cfg else default_steps(eps, step),
        split=str(cfg.get("split", _DEFAULT["split"])),
        max_images=int(cfg.get("max_images", _DEFAULT["max_images"])),
        loss_clamp=float(cfg.get("loss_clamp", _DEFAULT["loss_clamp"])),
        seed=int(cfg.get("seed", _DEFAULT["seed"])),
        norm=str(cfg.get("norm", _DEFAULT["norm"])),
        **{k: PARAMETERS[k].cast(cfg.get(k, _DEFAULT[k])) for k in DEEPFOOL_KEYS},
    )


def _check_algorithm_keys(cfg: dict) -> None:
    """Refuse a setting of the other algorithm than the entry's (it would be ignored)."""
    algorithm = cfg.get("algorithm", _DEFAULT["algorithm"])
    if algorithm == "deepfool":
        other, hint = SGD_KEYS, "they are the sgd algorithm's (DeepFool takes no step)"
    else:
        other, hint = DEEPFOOL_KEYS[1:], "they need algorithm: deepfool"
    given = sorted(set(cfg) & set(other))
    if given:
        raise WorkflowError(
            f"setting(s) {', '.join(given)} have no meaning for a uap with algorithm "
            f"{algorithm}: {hint}."
        )


def make_uap_step(model, spec: UapSpec):
    """Compiled ``step(x, y, delta) -> (delta, mean loss)``: one signed ascent step of the
    universal perturbation ``delta`` (1, H, W, 1) on a batch, projected onto the eps ball."""
    # heavy: TensorFlow loads in the uap job only (the Snakefile imports this module for the UAP
    # specs at parse time; attacks.steps imports TensorFlow at its top)
    import tensorflow as tf

    from cxrtransfer.attacks.steps import cross_entropy

    shape = tuple(model.input_shape[1:])
    eps, step, clamp = spec.eps_float, spec.step_float, float(spec.loss_clamp)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((1, *shape), tf.float32),
        ]
    )
    def uap_step(x, y, delta):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            probs = model(tf.clip_by_value(x + delta, 0.0, 1.0), training=False)
            # clamped loss (Shafahi et al. 2020): images already fooled stop dominating
            loss = tf.reduce_mean(tf.minimum(cross_entropy(y, probs), clamp))
        grad = tape.gradient(loss, delta)
        return tf.clip_by_value(delta + step * tf.sign(grad), -eps, eps), loss

    return uap_step


def craft_uap(
    model, images_u8: np.ndarray, labels: np.ndarray, spec: UapSpec, batch_size: int, progress=None
) -> tuple[np.ndarray, list[float]]:
    """The universal perturbation of ``model`` on ``images_u8`` (N, H, W) with ``labels``:
    int16 (H, W) grey levels within +-floor(eps), and the mean clamped loss of each of its
    ``spec.steps`` optimiser steps. Each step takes the next minibatch of a shuffled pass over
    the images (a fresh order, seeded by ``spec.seed``, whenever a pass ends)."""
    images_u8, labels = np.asarray(images_u8), np.asarray(labels)
    if images_u8.ndim != 3 or images_u8.dtype != np.uint8 or len(images_u8) == 0:
        raise WorkflowError(
            f"UAP crafting needs uint8 images (N, H, W) with N > 0, got {images_u8.dtype} "
            f"{images_u8.shape}."
        )
    step = make_uap_step(model, spec)
    delta = np.zeros((1, *images_u8.shape[1:], 1), np.float32)
    rng = np.random.default_rng(spec.seed)
    losses, batches = [], []
    for _ in range(spec.steps):
        if not batches:
            order = rng.permutation(len(images_u8))
            batches = [order[a : a + batch_size] for a in range(0, len(order), batch_size)][::-1]
        idx = np.sort(batches.pop())
        x = images_u8[idx][..., None].astype(np.float32) / 255.0
        delta, loss = step(x, labels[idx].astype(np.int32), delta)
        losses.append(float(loss))
        if progress is not None:
            progress.update(1)
    levels = np.rint(np.asarray(delta)[0, ..., 0] * 255.0)
    return np.clip(levels, -spec.levels, spec.levels).astype(np.int16), losses


def apply_uap(images_u8: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The images with the perturbation added in grey levels, clipped to 0..255 (exact)."""
    images_u8 = np.asarray(images_u8)
    if images_u8.shape[1:] != delta.shape:
        raise WorkflowError(
            f"The universal perturbation is {delta.shape} but the images are "
            f"{images_u8.shape[1:]}: it was crafted at another data.image_size. {FIX_DAMAGED}"
        )
    return np.clip(images_u8.astype(np.int16) + delta[None], 0, 255).astype(np.uint8)


def write_uap(path, delta: np.ndarray, attrs: dict) -> None:
    # heavy: h5py loads only in the jobs that read or write a UAP (the Snakefile imports this
    # module for the UAP specs at parse time)
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("delta", data=delta.astype(np.int16))
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, list | dict) else v


def read_uap(path, expected_source_sha256: str | None = None) -> tuple[np.ndarray, dict]:
    """The stored perturbation (int16 grey levels) and its attributes, checked."""
    # heavy: h5py loads only in the jobs that read or write a UAP (the Snakefile imports this
    # module for the UAP specs at parse time)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            delta = f["delta"][()]
            attrs = dict(f.attrs)
    except (OSError, KeyError) as e:
        raise WorkflowError(
            f"Cannot read the universal perturbation '{path}' ({e}). {FIX_DAMAGED}"
        ) from None
    levels = math.floor(float(attrs.get("eps", 0)) + 1e-9)
    if delta.ndim != 2 or int(np.abs(delta).max(initial=0)) > levels:
        raise WorkflowError(
            f"'{path}' holds a perturbation of shape {delta.shape} and max |delta| "
            f"{int(np.abs(delta).max(initial=0))} grey levels for eps {attrs.get('eps')}: damaged. "
            f"{FIX_DAMAGED}"
        )
    got = attrs.get("source_checkpoint_sha256")
    if expected_source_sha256 is not None and got != expected_source_sha256:
        raise WorkflowError(
            f"'{path}' was crafted on another checkpoint of its source than the current one "
            f"(stale). {FIX_DAMAGED}"
        )
    return delta, attrs


def craft_uap_job(
    *,
    model_path,
    metrics_path,
    shard_paths: list,
    out_path,
    attack_name: str,
    attack_cfg: dict,
    eps: float,
    image_size: int,
    batch_size: int,
    source_model: str,
) -> dict:
    """Rule uap: craft the source's universal perturbation on its crafting split and write it
    (with its fooling rate on those images) to ``out_path``."""
    # heavy: data.shards and data.adversarial_cache import h5py at their top (the Snakefile
    # imports this module for the UAP specs at parse time)
    from cxrtransfer.data.shards import read_shard
    from cxrtransfer.models.inference import predict_probs

    spec = uap_spec_from_config(attack_cfg, eps)
    record = model_record(model_path, metrics_path)
    shards = [read_shard(p, image_size) for p in shard_paths]
    images = np.concatenate([s["images"] for s in shards])
    labels = np.concatenate([s["labels"] for s in shards]).astype(np.int32)
    if spec.max_images and len(images) > spec.max_images:
        keep = np.sort(np.random.default_rng(spec.seed).permutation(len(images))[: spec.max_images])
        images, labels = images[keep], labels[keep]
    model = load_checkpoint(model_path, image_size)
    where = f"UAP {attack_name} of {source_model}"
    t = record["threshold"]
    if spec.is_deepfool:
        delta, crafted = _craft_deepfool(model, images, spec, t, batch_size, where)
    else:
        delta, crafted = _craft_sgd(model, images, labels, spec, batch_size, where)
    clean = predict_probs(model, images, batch_size)
    adv = predict_probs(model, apply_uap(images, delta), batch_size)
    fooling = flip_rate(clean >= t, adv >= t)
    attrs = {
        **spec.attrs(),
        "attack": attack_name,
        "source_model": source_model,
        "source_checkpoint_sha256": record["sha256"],
        "source_threshold": record["threshold"],
        "crafting_shards": [str(p) for p in shard_paths],
        "crafting_shards_sha256": [file_sha256(p) for p in shard_paths],
        "n_images": len(images),
        **crafted,
        "crafting_flip_rate": fooling,
        "max_linf_255": int(np.abs(delta).max(initial=0)),
    }
    _check_uap_reached(attrs, spec, where)
    write_uap(out_path, delta, attrs)
    LOG.info(
        "%s: fooling rate (decision changed) %.3f on its %d crafting images; max |delta| %d/255",
        out_path,
        fooling,
        len(images),
        attrs["max_linf_255"],
    )
    return attrs


def _craft_sgd(model, images, labels, spec: UapSpec, batch_size: int, where: str):
    """The SGD UAP (``craft_uap``) and what it records: its step losses."""
    LOG.info(
        "%s: eps %g/255, %d steps of %g/255 (minibatches of %d) over %d %s images",
        where,
        spec.eps,
        spec.steps,
        spec.step,
        batch_size,
        len(images),
        spec.split,
    )
    progress = Progress(spec.steps, f"{where} steps", every_seconds=30)
    delta, losses = craft_uap(model, images, labels, spec, batch_size, progress)
    return delta, {"step_losses": losses}


def _craft_deepfool(model, images, spec: UapSpec, threshold, batch_size: int, where: str):
    """The DeepFool UAP (``uap_deepfool.craft_uap_deepfool``) and what it records: its passes,
    fooling rate per pass and why it stopped."""
    # heavy: uap_deepfool imports TensorFlow at its top (this module is imported at parse time)
    from cxrtransfer.attacks.uap_deepfool import craft_uap_deepfool

    if threshold is None:
        raise WorkflowError(f"{where}: a DeepFool UAP needs a binary source with a threshold.")
    LOG.info(
        "%s: eps %g/255, DeepFool (overshoot %g, %d steps per image), at most %d passes over "
        "%d %s images until the fooling rate reaches %g",
        where,
        spec.eps,
        spec.overshoot,
        spec.deepfool_steps,
        spec.max_passes,
        len(images),
        spec.split,
        1 - spec.delta,
    )
    progress = Progress(spec.max_passes, f"{where} passes", every_seconds=30)
    _, delta, history = craft_uap_deepfool(model, images, spec, threshold, batch_size, progress)
    return delta, history.record()


def _check_uap_reached(attrs: dict, spec: UapSpec, where: str) -> None:
    """The stored perturbation reaches its eps label (``check_reached``), unless a DeepFool UAP
    stopped because it fooled 1 - delta of its crafting images with less (DeepFool's
    perturbations are minimal): then ``stopped`` says so."""
    # heavy: data.adversarial_cache imports h5py at its top (this module is imported at parse
    # time)
    from cxrtransfer.data.adversarial_cache import check_reached

    if spec.is_deepfool and attrs["stopped"] == "fooling_rate":
        return
    try:
        check_reached(attrs["max_linf_255"], spec.eps, where)
    except WorkflowError as e:
        if not spec.is_deepfool:
            raise
        raise WorkflowError(
            f"{where}: after max_passes {spec.max_passes} passes the DeepFool UAP fools "
            f"{attrs['fooling_rates'][-1]:.3f} of its crafting images (below 1 - delta = "
            f"{1 - spec.delta:g}) and reaches only {attrs['max_linf_255']}/255 of its eps "
            f"{spec.eps:g}/255; give more max_passes (or a larger delta), then rerun."
        ) from e


def uap_record(path) -> dict:
    """What an attack job records of the UAP it applies (its file and hash)."""
    return {"uap_file": str(Path(path)), "uap_sha256": file_sha256(path)}
