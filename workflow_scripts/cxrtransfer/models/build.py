"""Model construction and loading: every checkpoint sees float32 grayscale pixels in [0, 1].

The pixel -> backbone path (grayscale-to-RGB tiling, resizing where the backbone needs a larger
input, the architecture's own normalisation) is built from standard Keras layers inside the
model, so ``keras.models.load_model(path)`` works in safe mode with no custom objects, and an
epsilon of k/255 means the same thing for every architecture. (A defended model adds one
registered layer, ``layers.InputDefence``, that ``checkpoints.load_checkpoint`` registers.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtransfer import WorkflowError

# How each keras.applications family expects its input (see each module's preprocess_input).
#   caffe: RGB->BGR, 0..255 minus ImageNet channel means (channels are identical here, so the
#          BGR flip is a no-op)
#   tf:    0..255 -> [-1, 1]
#   torch: 0..1 minus ImageNet mean, divided by ImageNet std
#   raw:   the model includes its own preprocessing and wants 0..255
_CAFFE = ("ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19")
_TORCH = ("DenseNet121", "DenseNet169", "DenseNet201")
_TF = (
    "InceptionV3",
    "InceptionResNetV2",
    "Xception",
    "MobileNet",
    "MobileNetV2",
    "ResNet50V2",
    "ResNet101V2",
    "ResNet152V2",
    "NASNetMobile",
    "NASNetLarge",
)
# Smallest input side each backbone accepts (others: 32).
_MIN_SIDE = {
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "NASNetMobile": 32,
    "NASNetLarge": 32,
}

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocessing_mode(arch: str) -> str:
    if arch in _CAFFE:
        return "caffe"
    if arch in _TORCH:
        return "torch"
    if arch in _TF:
        return "tf"
    # EfficientNet*, ConvNeXt*, RegNet*, MobileNetV3*: include their own preprocessing.
    return "raw"


def backbone_constructor(arch: str):
    # heavy: Keras loads in the jobs that build or load a model only
    import keras

    ctor = getattr(keras.applications, arch, None)
    if ctor is None or not callable(ctor):
        known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise WorkflowError(
            f"Unknown architecture '{arch}': it is not a keras.applications model. "
            f"Use one of: {', '.join(known)}."
        )
    return ctor


def pixel_preprocessing(arch: str, image_size: int):
    """Keras layers that map a (H, W, 1) float image in [0, 1] to the backbone's input."""
    # heavy: Keras loads in the jobs that build or load a model only
    import keras

    layers = []
    side = max(image_size, _MIN_SIDE.get(arch, 32))
    if side != image_size:
        layers.append(keras.layers.Resizing(side, side, interpolation="bilinear", name="resize"))
    mode = preprocessing_mode(arch)
    if mode == "caffe":
        mean = [m / 255.0 for m in CAFFE_MEAN_BGR]
        var = [(1.0 / 255.0) ** 2] * 3
    elif mode == "torch":
        mean = list(IMAGENET_MEAN_RGB)
        var = [s**2 for s in IMAGENET_STD_RGB]
    elif mode == "tf":
        mean, var = [0.5] * 3, [0.25] * 3
    else:
        mean, var = [0.0] * 3, [(1.0 / 255.0) ** 2] * 3
    layers.append(keras.layers.Normalization(mean=mean, variance=var, name=f"normalise_{mode}"))
    return side, layers


def build_model(
    arch: str,
    image_size: int,
    pretrained: str = "none",
    seed: int | None = None,
    dropout: float = 0.2,
    hidden: int = 128,
    bn_momentum: float | None = None,
    n_labels: int | None = None,
):
    """Pixels in [0, 1], shape (H, W, 1) -> softmax over (no finding, finding).

    Head as in the seed study: global average pooling, Dense(128), Dropout(0.2), Dense(2).
    ``n_labels``: a multi-label model instead: the last layer is Dense(n_labels, sigmoid),
    one independent probability per finding (column k = the task's k-th label).
    """
    # heavy: Keras loads in the jobs that build or load a model only
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    ctor = backbone_constructor(arch)
    side, pre = pixel_preprocessing(arch, image_size)
    weights = resolve_pretrained(pretrained, arch)
    inputs = keras.Input((image_size, image_size, 1), dtype="float32", name="pixels")
    x = keras.layers.Concatenate(axis=-1, name="gray_to_rgb")([inputs, inputs, inputs])
    for layer in pre:
        x = layer(x)
    try:
        backbone = ctor(include_top=False, weights=weights, input_shape=(side, side, 3))
    except WorkflowError:
        raise
    except Exception as e:  # noqa: BLE001 - turned into a message the user can act on
        raise _weights_error(e, arch, pretrained) from None
    if bn_momentum is not None:
        # Keras' default (0.99) leaves the moving statistics near their initial values for
        # the first few hundred steps, so a from-scratch model on a small dataset predicts a
        # constant in inference mode (validation AUC exactly 0.5) while it learns in training.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    if n_labels is None:
        outputs = keras.layers.Dense(2, activation="softmax", name="probs", dtype="float32")(x)
    else:
        outputs = keras.layers.Dense(n_labels, activation="sigmoid", name="probs", dtype="float32")(
            x
        )
    return keras.Model(inputs, outputs, name=f"{arch}_pixels")


def resolve_pretrained(pretrained: str, arch: str):
    if pretrained in (None, "", "none"):
        return None
    if pretrained == "imagenet":
        return "imagenet"
    p = Path(pretrained)
    if not p.is_file():
        raise WorkflowError(
            f"pretrained: '{pretrained}' for {arch} is neither 'imagenet', 'none' nor an "
            "existing weights file. Give the path to a Keras weights file of the backbone "
            "without its top (e.g. saved with backbone.save_weights('x.weights.h5'))."
        )
    if not (p.name.endswith(".weights.h5") or p.suffix == ".h5"):
        raise WorkflowError(
            f"pretrained weights file '{pretrained}' must be a Keras weights file ending in "
            "'.weights.h5' (or a legacy '.h5')."
        )
    return str(p)


def _weights_error(e: Exception, arch: str, pretrained: str) -> WorkflowError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if pretrained == "imagenet":
        return WorkflowError(
            f"Could not get the ImageNet weights for {arch} ({msg}). Keras downloads them "
            "from the internet on first use; this machine could not. Alternatives: set "
            "`pretrained: none` to train from scratch, or `pretrained: /path/to/backbone."
            "weights.h5` to a local weights file (Keras caches downloads under "
            "~/.keras/models/ -- copy them there from a machine with network access)."
        )
    return WorkflowError(
        f"Could not load the weights file '{pretrained}' into a {arch} backbone ({msg}). "
        "Is it a weights file of this architecture, saved without its classification top?"
    )


def build_ensemble(members: list, names: list[str], image_size: int | None = None):
    """One model from several checkpoints: the softmax of their averaged logits (Liu et al.
    2017), built from standard Keras layers so it saves and loads like any checkpoint and
    follows the model contract.

    Each member's final layer must be the 2-unit softmax Dense of ``build_model``; its logits
    are that layer's input through a linear copy of it. Members must see the same input size.
    """
    # heavy: Keras loads in the jobs that build or load a model only
    import keras

    shapes = {n: tuple(m.input_shape) for n, m in zip(names, members, strict=True)}
    if len(set(shapes.values())) > 1:
        raise WorkflowError(
            f"The ensemble {'+'.join(names)} has members with different input sizes {shapes}; "
            "its members must see the same pixels (retrain them at one data.image_size)."
        )
    shape = next(iter(shapes.values()))
    if image_size is not None and shape[1:3] != (image_size, image_size):
        raise WorkflowError(
            f"The ensemble {'+'.join(names)} members expect {shape[1]}x{shape[2]} images but "
            f"data.image_size is {image_size}: retrain them."
        )
    inputs = keras.Input(shape[1:], dtype="float32", name="pixels")
    logits = []
    for i, (name, m) in enumerate(zip(names, members, strict=True)):
        last = m.layers[-1]
        if not (
            isinstance(last, keras.layers.Dense)
            and last.units == 2
            and last.activation is keras.activations.softmax
        ):
            raise WorkflowError(
                f"Ensemble member {name}: its last layer is {type(last).__name__}, not the "
                "2-class softmax Dense of cxrtransfer.models.build.build_model, so its logits are "
                "unknown."
            )
        body = keras.Model(m.inputs, last.input, name=f"member{i}")
        head = keras.layers.Dense(2, name=f"member{i}_logits", dtype="float32")
        logits.append(head(body(inputs)))
        head.set_weights(last.get_weights())
    mean = keras.layers.Average(name="mean_logits")(logits)
    probs = keras.layers.Activation("softmax", name="probs", dtype="float32")(mean)
    return keras.Model(inputs, probs, name="ensemble")


def build_finding_view(model, column: int, name: str = "finding_view"):
    """The 2-class contract checkpoint of one output of a multi-label model (a *view*).

    ``model``'s last layer is the Dense(K, sigmoid) of ``build_model(n_labels=K)``; the view
    is its body up to that layer's input, then Dense(2, softmax) with kernel columns
    [0, W[:, k]] and bias [0, b[k]]: softmax([0, z_k]) = [1 - sigmoid(z_k), sigmoid(z_k)], so
    column 1 is the model's column k, and the cross-entropy of label 1/0 on it is the binary
    cross-entropy of output k (an attack on the view is an attack on that finding's output).
    Standard Keras layers only: it saves and loads like any checkpoint."""
    # heavy: Keras loads in the jobs that build or load a model only
    import keras

    last = model.layers[-1]
    if not (isinstance(last, keras.layers.Dense) and last.activation is keras.activations.sigmoid):
        raise WorkflowError(
            f"{name}: the multi-label model's last layer is {type(last).__name__}, not the "
            "sigmoid Dense of cxrtransfer.models.build.build_model(n_labels=K); its logits are unknown."
        )
    if not 0 <= column < last.units:
        raise WorkflowError(f"{name}: output column {column} is not in 0..{last.units - 1}.")
    kernel, bias = last.get_weights()
    body = keras.Model(model.inputs, last.input, name="multi_label_body")
    inputs = keras.Input(tuple(model.input_shape[1:]), dtype="float32", name="pixels")
    head = keras.layers.Dense(2, activation="softmax", name="probs", dtype="float32")
    outputs = head(body(inputs))
    k2 = np.zeros((kernel.shape[0], 2), kernel.dtype)
    k2[:, 1] = kernel[:, column]
    head.set_weights([k2, np.array([0.0, bias[column]], bias.dtype)])
    return keras.Model(inputs, outputs, name="finding_view")
