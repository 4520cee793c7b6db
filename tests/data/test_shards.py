"""HDF5 shards: round trip, PNG modes, corrupt input, atomic output."""

import h5py
import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.data.shards import decode, read_shard, write_shard
from PIL import Image


def _rows(paths, labels=None):
    n = len(paths)
    return pd.DataFrame(
        {
            "image_index": [f"{i:08d}_000.png" for i in range(n)],
            "patient_id": list(range(n)),
            "label": labels if labels is not None else [i % 2 for i in range(n)],
            "split": "test",
            "path": [str(p) for p in paths],
        }
    )


def _gray(seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def test_round_trip(tmp_path):
    imgs = [_gray(i) for i in range(5)]
    paths = []
    for i, a in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a, "L").save(p)
        paths.append(p)
    out = tmp_path / "s" / "000.h5"
    r = write_shard(_rows(paths), out, 40, {"task": "t", "split": "test"}, workers=2)
    assert r == {"written": 5, "rejected": 0}
    s = read_shard(out)
    assert s["images"].dtype == np.uint8 and s["images"].shape == (5, 40, 40)
    assert np.array_equal(s["images"], np.stack(imgs))  # same size: lossless
    assert list(s["labels"]) == [0, 1, 0, 1, 0]
    assert list(s["image_index"]) == [f"{i:08d}_000.png" for i in range(5)]
    with h5py.File(out) as f:
        assert f["labels"].dtype == np.int8
        assert f["images"].chunks == (1, 40, 40) and f["images"].compression == "gzip"
        assert f.attrs["image_size"] == 40 and f.attrs["task"] == "t" and f.attrs["n_rejected"] == 0
    # resized shards keep the content (a smooth gradient survives bilinear downscaling)
    grad = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(grad, "L").save(tmp_path / "g.png")
    small, reason = decode(str(tmp_path / "g.png"), 16)
    assert reason is None and small.shape == (16, 16)
    assert small[0, 0] < 20 and small[0, -1] > 235


def test_png_modes_convert_to_8bit_gray(tmp_path):
    base = _gray(1, 32)
    rgba = np.stack([base, base, base, np.full_like(base, 255)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(base, "L").convert("P")
    pal.save(tmp_path / "pal.png")
    Image.fromarray(base.astype(np.uint16) * 257).save(tmp_path / "16.png")  # full 16-bit range
    la = Image.fromarray(np.stack([base, np.full_like(base, 200)], -1), "LA")
    la.save(tmp_path / "la.png")
    for name in ("rgba", "pal", "16", "la"):
        img, reason = decode(str(tmp_path / f"{name}.png"), 32)
        assert reason is None, name
        assert img.dtype == np.uint8
        assert np.abs(img.astype(int) - base).max() <= 1, name
    assert Image.open(tmp_path / "16.png").mode.startswith("I")


def test_corrupt_files_are_rejected_with_reason(tmp_path):
    good = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_gray(i), "L").save(p)
        good.append(p)
    data = good[0].read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    bad = [
        tmp_path / "trunc.png",
        tmp_path / "zero.png",
        tmp_path / "junk.png",
        tmp_path / "gone.png",
    ]
    out = tmp_path / "000.h5"
    r = write_shard(_rows(good + bad), out, 40, {}, workers=1, max_rejected_fraction=0.5)
    assert r == {"written": 8, "rejected": 4}
    with h5py.File(out) as f:
        reasons = dict(
            zip(
                f["rejected_image_index"][...].astype(str),
                f["rejected_reason"][...].astype(str),
                strict=True,
            )
        )
        assert f["images"].shape[0] == 8 and f.attrs["n_rejected"] == 4
    assert len(reasons) == 4
    assert any("missing" in v for v in reasons.values())
    assert all(("corrupt" in v) or ("missing" in v) for v in reasons.values())


def test_too_many_rejections_fail_without_output(tmp_path):
    p = tmp_path / "ok.png"
    Image.fromarray(_gray(), "L").save(p)
    (tmp_path / "bad.png").write_bytes(b"nonsense")
    out = tmp_path / "000.h5"
    with pytest.raises(WorkflowError, match="max_rejected_fraction"):
        write_shard(_rows([p, tmp_path / "bad.png"]), out, 40, {}, max_rejected_fraction=0.1)
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))  # no half-written file left behind


def test_read_shard_checks_size(tmp_path):
    p = tmp_path / "ok.png"
    Image.fromarray(_gray(), "L").save(p)
    write_shard(_rows([p]), tmp_path / "s.h5", 40, {})
    with pytest.raises(WorkflowError, match="40x40.*expects 32x32"):
        read_shard(tmp_path / "s.h5", image_size=32)
    with pytest.raises(WorkflowError, match="does not exist"):
        read_shard(tmp_path / "missing.h5")
