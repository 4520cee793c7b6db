"""The model a training job fits: built and compiled as training uses it (optimizer and its
learning-rate schedule, loss), started from the weights of an ``init_from`` checkpoint, wrapped
by an adversarial trainer when asked; and the deterministic ops a seeded run needs."""

from __future__ import annotations

import contextlib

from cxrtransfer import WorkflowError
from cxrtransfer.models.build import build_model
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.settings import is_multilabel


def make_optimizer(s: dict, steps_per_epoch: int):
    """The optimizer of settings ``s`` over a cosine learning-rate decay with linear warmup."""
    # heavy: Keras loads in training jobs only
    import keras

    total = max(1, s["epochs"] * steps_per_epoch)
    warm = min(s["warmup_epochs"] * steps_per_epoch, total - 1)
    lr = s["learning_rate"]
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warm else lr,
        decay_steps=max(1, total - warm),
        alpha=0.05,
        warmup_target=lr if warm else None,
        warmup_steps=warm,
    )
    opt = s["optimizer"]
    if opt == "sgd":
        return keras.optimizers.SGD(schedule, momentum=s["momentum"])
    if opt == "adamw":
        return keras.optimizers.AdamW(schedule)
    if opt == "rmsprop":
        return keras.optimizers.RMSprop(schedule)
    return keras.optimizers.Adam(schedule)


def compiled_model(s: dict, steps_per_epoch: int, init_checkpoint=None, make_trainer=None):
    """The model of settings ``s``, compiled as training uses it (also used by the benchmark).

    ``init_checkpoint``: a finished checkpoint of the same architecture (``init_from``) whose
    weights the model starts from. With ``s["adversarial"]`` the returned model is
    ``make_trainer(model, s["adversarial"], s["seed"])``, the adversarial trainer around the
    contract model (``cxrtransfer.attacks.adversarial_training.make_trainer``: the models stage
    never imports attack code, the caller hands it in), which ``contract_model(model)`` gives
    back."""
    pretrained = "none" if init_checkpoint is not None else s["pretrained"]
    multi = is_multilabel(s)
    model = build_model(
        s["arch"],
        s["image_size"],
        pretrained,
        seed=s["seed"],
        bn_momentum=s["bn_momentum"],
        n_labels=len(s["labels"]) if multi else None,
    )
    if init_checkpoint is not None:
        load_init_weights(model, init_checkpoint, s)
    if s.get("adversarial"):
        if make_trainer is None:
            raise ValueError(
                "adversarial training settings need make_trainer "
                "(cxrtransfer.attacks.adversarial_training.make_trainer)"
            )
        model = make_trainer(model, s["adversarial"], s["seed"])
    model.compile(
        optimizer=make_optimizer(s, steps_per_epoch),
        loss="binary_crossentropy" if multi else "sparse_categorical_crossentropy",
        metrics=["binary_accuracy" if multi else "accuracy"],
    )
    return model


def contract_model(model):
    """The model that follows the model contract: ``model`` itself, or the model an adversarial
    trainer trains (what is evaluated and saved)."""
    return getattr(model, "contract_model", model)


def load_init_weights(model, path, s: dict) -> None:
    """Start ``model`` from the weights of the finished checkpoint ``path`` (``init_from``)."""
    init = load_checkpoint(path, s["image_size"], len(s["labels"]) if is_multilabel(s) else 2)
    src, dst = init.get_weights(), model.get_weights()
    if [w.shape for w in src] != [w.shape for w in dst]:
        raise WorkflowError(
            f"Model '{s['name']}': the init_from checkpoint '{path}' is not a {s['arch']} of "
            f"this workflow at {s['image_size']} px (its weights have other shapes); retrain "
            f"'{s.get('init_from')}' or fix models.{s['name']}.init_from."
        )
    model.set_weights(src)


@contextlib.contextmanager
def deterministic_ops(seed: int):
    """Seed Python, NumPy, TensorFlow and Keras and make TensorFlow ops deterministic for the
    duration (restoring the previous op-determinism setting afterwards)."""
    # heavy: TensorFlow and Keras load in training jobs only
    import keras
    import tensorflow as tf

    try:  # is/disable are not in the public API; without them determinism stays on
        # heavy: TensorFlow's private op-determinism switch, in training jobs only
        from tensorflow.python.framework import config as tf_config

        restore = not tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):
        tf_config, restore = None, False
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        if restore:
            tf_config.disable_op_determinism()
