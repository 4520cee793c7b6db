"""The model contract: pixels in [0, 1] -> 2-class softmax, safe-mode checkpoints, weights."""

import numpy as np
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.models.build import build_model, preprocessing_mode
from cxrtransfer.models.checkpoints import load_checkpoint


@pytest.mark.parametrize(
    "arch, size",
    [("ResNet50", 32), ("DenseNet121", 32), ("InceptionV3", 48), ("MobileNetV3Small", 32)],
)
def test_contract_and_safe_mode_round_trip(tmp_path, arch, size):
    import keras

    m = build_model(arch, size, "none", seed=0)
    assert m.input_shape == (None, size, size, 1) and m.output_shape == (None, 2)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in m.layers)
    x = np.random.default_rng(0).random((3, size, size, 1)).astype("float32")
    p = m.predict(x, verbose=0)
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()
    path = tmp_path / "model.keras"
    m.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    assert np.allclose(loaded.predict(x, verbose=0), p, atol=1e-5)
    assert load_checkpoint(path, size).input_shape == (None, size, size, 1)
    with pytest.raises(WorkflowError, match="data.image_size"):
        load_checkpoint(path, size + 8)


def test_preprocessing_matches_keras_applications():
    """The in-model normalisation equals each family's own preprocess_input on 0..255 RGB."""
    import keras
    from cxrtransfer.models.build import pixel_preprocessing

    gray = np.random.default_rng(1).random((2, 32, 32, 1)).astype("float32")
    rgb255 = np.repeat(gray, 3, axis=-1) * 255.0
    cases = {
        "ResNet50": keras.applications.resnet50.preprocess_input,
        "DenseNet121": keras.applications.densenet.preprocess_input,
        "MobileNetV2": keras.applications.mobilenet_v2.preprocess_input,
    }
    for arch, ref in cases.items():
        _, layers = pixel_preprocessing(arch, 32)
        x = np.repeat(gray, 3, axis=-1)
        for layer in layers:
            x = layer(x)
        np.testing.assert_allclose(np.asarray(x), ref(rgb255.copy()), rtol=1e-4, atol=1e-3)
    assert preprocessing_mode("EfficientNetB0") == "raw"


def test_local_weights_file_is_used(tmp_path):
    import keras

    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    w0 = backbone.get_weights()
    w0 = [w + 0.01 for w in w0]
    backbone.set_weights(w0)
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    m = build_model("MobileNetV3Small", 32, str(path), seed=0)
    inner = next(layer for layer in m.layers if isinstance(layer, keras.Model))
    assert all(np.allclose(a, b) for a, b in zip(inner.get_weights(), w0, strict=True))
    with pytest.raises(WorkflowError, match="weights file.*ResNet50"):
        build_model("ResNet50", 32, str(path))  # weights of another architecture
    with pytest.raises(WorkflowError, match="neither 'imagenet', 'none'"):
        build_model("ResNet50", 32, str(tmp_path / "missing.weights.h5"))


def test_imagenet_offline_fails_clearly(monkeypatch, tmp_path):
    """Without network (forced here: no proxy reachable) the error names the alternatives."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(WorkflowError, match="pretrained: none"):
        build_model("MobileNetV3Small", 32, "imagenet")


def test_bad_checkpoints(tmp_path):
    import keras

    with pytest.raises(WorkflowError, match="does not exist"):
        load_checkpoint(tmp_path / "none.keras")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(WorkflowError, match="empty"):
        load_checkpoint(tmp_path / "empty.keras")
    m = build_model("MobileNetV3Small", 32, "none", seed=0)
    m.save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "trunc.keras").write_bytes(data[: len(data) // 3])
    with pytest.raises(WorkflowError, match="truncated, corrupt"):
        load_checkpoint(tmp_path / "trunc.keras")
    inp = keras.Input((32, 32, 3))
    foreign = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    foreign.save(tmp_path / "foreign.keras")
    with pytest.raises(WorkflowError, match="model contract"):
        load_checkpoint(tmp_path / "foreign.keras")
    with pytest.raises(WorkflowError, match="keras.applications"):
        build_model("ResNet51", 32)
