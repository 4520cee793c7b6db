"""Loading a model checkpoint: safe mode, no custom objects but the registered input-defence
layer, and a check that it honours the model contract (pixels (H, W, 1) in [0, 1] in, a 2-class
softmax or a K-column sigmoid out)."""

from __future__ import annotations

import os
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED
from cxrtransfer.models.layers import defence_layer_class


def load_checkpoint(
    path: str | os.PathLike, image_size: int | None = None, n_outputs: int | None = 2
):
    """Load a model checkpoint in safe mode and check it honours the model contract
    (``n_outputs`` columns: 2 for the 2-class contract, K for a multi-label model)."""
    # heavy: Keras loads in the jobs that load a model only
    import keras

    defence_layer_class()  # a defended model's input transform (registered Keras layer)
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"Model checkpoint '{path}' does not exist. Run its training rule.")
    if path.stat().st_size == 0:
        raise WorkflowError(f"Model checkpoint '{path}' is empty (truncated). {FIX_DAMAGED}")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WorkflowError(
            f"Cannot load model checkpoint '{path}': {first}. It is truncated, corrupt or not "
            f"a Keras .keras file written by this workflow. {FIX_DAMAGED}"
        ) from None
    check_contract(model, path, image_size, n_outputs)
    return model


def check_contract(model, path, image_size: int | None = None, n_outputs: int = 2) -> None:
    shape = tuple(model.input_shape)
    out = tuple(model.output_shape)
    if len(shape) != 4 or shape[-1] != 1 or out[-1] != n_outputs:
        what = (
            "a 2-class softmax output"
            if n_outputs == 2
            else f"a {n_outputs}-column sigmoid output (a multi-label model of the config's labels)"
        )
        raise WorkflowError(
            f"Model '{path}' does not follow the model contract: input {shape}, output {out}; "
            f"expected input (None, H, W, 1) pixels in [0, 1] and {what}. "
            "Foreign checkpoints must be wrapped with cxrtransfer.models.build.build_model."
        )
    if image_size is not None and (shape[1] != image_size or shape[2] != image_size):
        raise WorkflowError(
            f"Model '{path}' expects {shape[1]}x{shape[2]} images but data.image_size is "
            f"{image_size}: retrain it (changing data.image_size reruns training) or fix the config."
        )
