"""The training input pipeline (data.pipelines): float batches in [0, 1], the same batches for
the same seed, and no TensorFlow warning or error line in the job's log while it runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cxrtransfer.data.pipelines import make_dataset
from cxrtransfer.models.trainable import deterministic_ops

AUGMENT = {"rotation": 0.02, "zoom": 0.05, "shift": 0.05, "horizontal_flip": True}
HERE = Path(__file__).resolve().parent
# A Python warning ("...py:39: UserWarning: ...") or a C++ log line of TensorFlow of severity
# warning or error ("E0000 00:00:1796655895.716023 17591 node_def_util.cc:682] ...")
WARNING_LINE = re.compile(r"^(.*\w+Warning: .*|[WE]\d{4} .*)$", re.MULTILINE)


def _first_batch(paths, seed=1):
    """The first training batch, built as the train job builds it (op determinism on)."""
    with deterministic_ops(seed):
        ds = make_dataset(paths, 64, 32, shuffle=True, seed=seed, augment=AUGMENT)
        x, y = next(iter(ds))
    return x.numpy(), y.numpy()


@pytest.fixture
def train_paths(pneumothorax_shards):
    return [str(p) for p in pneumothorax_shards["train"]]


def test_training_batches_are_seeded_floats_in_the_unit_range(train_paths):
    x, y = _first_batch(train_paths)
    assert x.shape == (32, 64, 64, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.0
    assert set(np.unique(y)) <= {0, 1}
    x2, y2 = _first_batch(train_paths)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_the_pipeline_runs_without_tensorflow_warnings(root, train_paths):
    """No Python warning (e.g. tf.data's "`deterministic` has no effect") and no C++ warning
    or error line (e.g. the make_deterministic rewrite's "use_unbounded_threadpool") in what
    a train job's pipeline writes to its log. In a new process, as a job runs it: TensorFlow
    logs such a line only the first time in a process."""
    child = f"from test_pipelines import _first_batch; _first_batch({train_paths!r})"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(root / "workflow_scripts")]),
        "TF_CPP_MIN_LOG_LEVEL": "0",  # every line TensorFlow has to say
    }
    r = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert WARNING_LINE.findall(r.stdout + r.stderr) == [], r.stderr
