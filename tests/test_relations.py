"""Relations are measured from what two models share, never from their names."""

import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.relations import RELATIONS, factors, read_patients, relation

R50 = {"arch": "ResNet50", "task": "pneumothorax", "pretrained": "none", "seed": 1}
R50_S2 = {**R50, "seed": 2}
D121 = {**R50, "arch": "DenseNet121", "seed": 3}
CARD = {**R50, "task": "cardiomegaly"}
HALF_A, HALF_B, ALL = set(range(0, 50)), set(range(50, 100)), set(range(100))


def _label(source, target, s, t, sp, tp, data_task="pneumothorax"):
    return relation(factors(source, target, s, t, sp, tp), s["task"], data_task)


@pytest.mark.parametrize(
    ("source_settings", "source_patients", "expected"),
    [
        (R50_S2, HALF_B, "surrogate"),
        (R50_S2, ALL, "same-data surrogate"),  # a superset of the target's patients
        (R50_S2, set(range(25, 75)), "overlapping-data surrogate"),
        (D121, HALF_B, "cross-architecture"),
        (D121, HALF_A, "same-data cross-architecture"),
        (CARD, HALF_B, "cross-task"),
    ],
)
def test_relation_from_measured_overlap(source_settings, source_patients, expected):
    assert _label("src", "tgt", source_settings, R50, source_patients, HALF_A) == expected
    assert expected in RELATIONS


def test_a_surrogate_sharing_patients_is_never_called_independent():
    """The audit's case: target on all patients, 'surrogate' on half of them."""
    f = factors("s2", "tgt", R50_S2, R50, HALF_B, ALL)
    assert f["patient_overlap"] == pytest.approx(0.5)
    assert relation(f, "pneumothorax", "pneumothorax") == "overlapping-data surrogate"


def test_factors_columns_and_white_box():
    f = factors("m", "m", R50, R50, HALF_A, HALF_A)
    assert f == {
        "same_model": True,
        "same_arch": True,
        "same_pretraining": True,
        "same_task": True,
        "same_seed": True,
        "patient_overlap": 1.0,
        "same_network": False,  # the weights' hashes were not given
        "same_defence": True,
    }
    assert relation(f, "pneumothorax", "pneumothorax") == "white-box"
    g = factors("a", "b", {**R50, "pretrained": "imagenet"}, R50_S2, HALF_B, HALF_A)
    assert not g["same_pretraining"] and not g["same_seed"] and g["patient_overlap"] == 0


def test_cross_task_source_on_other_task_images():
    # a pneumothorax model attacking cardiomegaly images is cross-task whatever it shares
    assert _label("p", "c", R50, CARD, ALL, ALL, data_task="cardiomegaly") == "cross-task"


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(WorkflowError, match="'x'.*arch"):
        factors("x", "t", {"task": "p"}, R50, HALF_A, HALF_A)
    with pytest.raises(WorkflowError, match="no training patients"):
        factors("s", "t", R50, R50_S2, HALF_A, set())
    bad = tmp_path / "train_patients.txt"
    bad.write_text("12\nnot-a-number\n")
    with pytest.raises(WorkflowError, match="train_patients.txt"):
        read_patients(bad)
    good = tmp_path / "ok.txt"
    good.write_text("3\n1\n2\n")
    assert read_patients(good) == {1, 2, 3}
