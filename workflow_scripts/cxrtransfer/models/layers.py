"""Input-transform defences: a trained model behind a transform of its input pixels.

A defended target (config ``defences:``) is its model with one transform applied to the
[0, 1] pixels first, saved as a checkpoint of its own (``build_defended``), so predictions,
evaluation and attacks treat it like any model and the model contract holds.

Transforms (one per defended model; the value is the key's):

- ``jpeg_quality`` q (1-100): JPEG compression of the 8-bit image at quality q, decoded again
  (libjpeg through ``tf.io.encode_jpeg`` / ``decode_jpeg``, slow accurate integer DCT: the
  same as Pillow's encoder; Dziugaite et al. 2016, Guo et al. 2018);
- ``bit_depth`` b (1-7): the 8-bit grey levels reduced to 2^b levels,
  ``round(x * (2^b - 1)) / (2^b - 1)`` (feature squeezing, Xu et al. 2018);
- ``median_filter`` k (odd, 3-15): k x k median, the image mirrored at its edges (SciPy's
  ``median_filter(mode="reflect")``; Xu et al. 2018);
- ``gaussian_noise`` s (in 1/255 grey levels): random Gaussian noise of standard deviation
  s/255 added to every pixel, clipped to [0, 1]; a new draw at every call (randomised).

Gradients (what an attack on the defended checkpoint itself, the adaptive attack, follows):
JPEG and bit-depth reduction are piecewise constant, so their true gradient is zero almost
everywhere; they pass the gradient through unchanged (BPDA with the identity, Athalye et al.
2018). The median filter and the noise are differentiable and keep their own gradients; the
noise is random, so attacks on it average their gradients over draws (EOT, the attack's
``eot_samples``).
"""

from __future__ import annotations

from cxrtransfer import WorkflowError

KINDS = ("jpeg_quality", "bit_depth", "median_filter", "gaussian_noise")
# transforms without a useful gradient: the backward pass is the identity's (BPDA)
STRAIGHT_THROUGH = ("jpeg_quality", "bit_depth")
RANDOMISED = ("gaussian_noise",)


def defence_kind(defence: dict) -> tuple[str, float]:
    """The (kind, value) of a ``defence:`` mapping of the config (exactly one known key; the
    config schema checks the values' ranges)."""
    keys = [k for k in defence if k in KINDS]
    unknown = sorted(set(defence) - set(KINDS))
    if unknown or len(keys) != 1:
        raise WorkflowError(
            f"a defence is exactly one of {', '.join(KINDS)}; got {sorted(defence) or 'none'}."
        )
    return keys[0], defence[keys[0]]


def defence_label(defence: dict) -> str:
    """Short text of a defence, e.g. ``jpeg_quality=75`` (tables, relations)."""
    kind, v = defence_kind(defence)
    return f"{kind}={v:g}" if isinstance(v, float) else f"{kind}={v}"


# --- the transforms (TensorFlow; images (N, H, W, 1) float32 in [0, 1]) --------------------


def to_grey_levels(x):
    """[0, 1] pixels -> uint8 grey levels (rounded), as the caches store them."""
    # heavy: TensorFlow loads in the jobs that run a defended model only
    import tensorflow as tf

    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def jpeg(x, quality: int):
    """JPEG-compress and decode every image at ``quality`` (8-bit grey levels)."""
    # heavy: TensorFlow loads in the jobs that run a defended model only
    import tensorflow as tf

    u8 = to_grey_levels(x)

    def one(img):
        data = tf.io.encode_jpeg(img, format="grayscale", quality=int(quality))
        return tf.io.decode_jpeg(data, channels=1, dct_method="INTEGER_ACCURATE")

    out = tf.map_fn(one, u8, fn_output_signature=tf.TensorSpec(u8.shape[1:], tf.uint8))
    return tf.reshape(tf.cast(out, tf.float32) / 255.0, tf.shape(x))


def bit_depth(x, bits: int):
    """Grey levels reduced to 2^bits levels: round(x * (2^bits - 1)) / (2^bits - 1)."""
    # heavy: TensorFlow loads in the jobs that run a defended model only
    import tensorflow as tf

    levels = float(2 ** int(bits) - 1)
    return tf.round(tf.clip_by_value(x, 0.0, 1.0) * levels) / levels


def median_filter(x, size: int):
    """k x k median of every pixel's window, the image mirrored at its edges (SciPy
    ``median_filter(mode="reflect")``, which repeats the edge pixel)."""
    # heavy: TensorFlow loads in the jobs that run a defended model only
    import tensorflow as tf

    p = int(size) // 2
    padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="SYMMETRIC")
    patches = tf.image.extract_patches(
        padded, sizes=[1, size, size, 1], strides=[1, 1, 1, 1], rates=[1, 1, 1, 1], padding="VALID"
    )
    k = int(size) * int(size)
    # the middle of the sorted window (k is odd); top_k keeps a gradient to the median pixel
    top = tf.math.top_k(patches, k=k // 2 + 1, sorted=True).values
    return top[..., -1:]


def straight_through(fn):
    """``fn`` forward, the identity's gradient backward (BPDA, Athalye et al. 2018)."""
    # heavy: TensorFlow loads in the jobs that run a defended model only
    import tensorflow as tf

    @tf.custom_gradient
    def bpda(x):
        def grad(dy):
            return dy

        return fn(x), grad

    return bpda


def _layer_class():
    # heavy: Keras loads in the jobs that run a defended model only
    import keras

    @keras.saving.register_keras_serializable(package="cxrtransfer")
    class InputDefence(keras.layers.Layer):
        """One input transform of ``defences`` (``kind``, ``value``); ``seed`` seeds the noise
        of a randomised transform (its state is saved with the checkpoint)."""

        def __init__(self, kind: str, value, seed: int = 0, **kwargs):
            super().__init__(**kwargs)
            if kind not in KINDS:
                raise WorkflowError(f"Unknown input defence '{kind}'; known: {', '.join(KINDS)}.")
            self.kind, self.value, self.seed = kind, value, int(seed)
            self.noise_seed = keras.random.SeedGenerator(self.seed) if kind in RANDOMISED else None

        def call(self, x):
            # heavy: TensorFlow loads in the jobs that run a defended model only
            import tensorflow as tf

            if self.kind == "gaussian_noise":
                noise = keras.random.normal(tf.shape(x), seed=self.noise_seed)
                return tf.clip_by_value(x + noise * (float(self.value) / 255.0), 0.0, 1.0)
            if self.kind == "median_filter":
                return median_filter(x, int(self.value))
            if self.kind == "jpeg_quality":
                return straight_through(lambda z: jpeg(z, int(self.value)))(x)
            return straight_through(lambda z: bit_depth(z, int(self.value)))(x)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "kind": self.kind,
                "value": self.value,
                "seed": self.seed,
            }

    return InputDefence


_LAYER = None


def defence_layer_class():
    """The Keras layer of the input defences (registered once per process, so checkpoints
    holding it load in safe mode after ``cxrtransfer.models.checkpoints.load_checkpoint`` registered it)."""
    global _LAYER
    if _LAYER is None:
        _LAYER = _layer_class()
    return _LAYER


def build_defended(base, defence: dict, seed: int = 0):
    """``base`` (a model of the contract) behind the input transform ``defence``: one model
    of the contract (pixels in, 2-class softmax out)."""
    # heavy: Keras loads in the jobs that run a defended model only
    import keras

    kind, value = defence_kind(defence)
    shape = tuple(base.input_shape[1:])
    inputs = keras.Input(shape, dtype="float32", name="pixels")
    x = defence_layer_class()(kind, value, seed=seed, name="defence")(inputs)
    out = base(x)
    return keras.Model(inputs, out, name="defended")
