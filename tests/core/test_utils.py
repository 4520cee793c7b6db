"""Atomic outputs and log-friendly progress lines."""

import logging

import pytest
from cxrtransfer.core.files import atomic_path, params_hash
from cxrtransfer.core.logs import Progress


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "a" / "file.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not out.exists() and not list(out.parent.iterdir())
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and list(out.parent.iterdir()) == [out]


def test_progress_lines_have_count_rate_eta_and_no_carriage_return(caplog):
    logger = logging.getLogger("test-progress")
    p = Progress(10, "attack", every_seconds=0.0, logger=logger)
    with caplog.at_level(logging.INFO, logger="test-progress"):
        for _ in range(10):
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[-1].startswith("attack: 10/10 (100%)") and "/s" in lines[-1] and "ETA" in lines[-1]
    assert not any("\r" in line for line in lines)


def test_params_hash_is_order_independent():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
