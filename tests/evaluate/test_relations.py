"""Relations are measured from what two models share, never from their names."""

import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.core.products import read_patients
from cxrtransfer.evaluate.relations import (
    ENSEMBLE_RELATIONS,
    RELATIONS,
    SINGLE_MODEL_RELATIONS,
    ensemble_relation,
    factors,
    relation,
)

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


ENS = {**R50, "arch": "ResNet50+ResNet50V2", "seed": "2+3"}


def test_an_ensemble_with_a_same_architecture_member_is_not_cross_architecture():
    # the audit's case: members ResNet50 (a surrogate of the ResNet50 target) and ResNet50V2
    joined = _label("r50_s2+r50v2", "tgt", ENS, R50, HALF_B, HALF_A)
    assert joined == "cross-architecture"  # what comparing the joined strings says
    members = [
        _label("r50_s2", "tgt", R50_S2, R50, HALF_B, HALF_A),
        _label("r50v2", "tgt", {**R50, "arch": "ResNet50V2"}, R50, HALF_B, HALF_A),
    ]
    assert members == ["surrogate", "cross-architecture"]
    assert ensemble_relation(members) == "ensemble incl. a surrogate of the target"


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        (["white-box", "surrogate"], "ensemble incl. the target"),
        (["same network, other defence", "cross-architecture"], "ensemble incl. the target"),
        (["same-data surrogate", "cross-architecture"], "ensemble incl. a surrogate of the target"),
        (["cross-architecture", "overlapping-data cross-architecture"],
         "ensemble of other architectures"),
        (["cross-task", "cross-task"], "cross-task ensemble"),
    ],
)  # fmt: skip
def test_ensemble_relation_from_member_relations(members, expected):
    assert ensemble_relation(members) == expected
    assert expected in ENSEMBLE_RELATIONS and expected not in SINGLE_MODEL_RELATIONS


def test_ensemble_relation_needs_member_relations():
    for bad in (["surrogate"], ["surrogate", "ensemble incl. the target"], ["surrogate", "x"]):
        with pytest.raises(WorkflowError, match="single-model relations of its"):
            ensemble_relation(bad)


def test_every_relation_label_has_an_abbreviation_and_is_one_kind():
    assert set(ENSEMBLE_RELATIONS) | set(SINGLE_MODEL_RELATIONS) == set(RELATIONS)
    assert not set(ENSEMBLE_RELATIONS) & set(SINGLE_MODEL_RELATIONS)
    assert len(set(RELATIONS.values())) == len(RELATIONS)
    for rel in SINGLE_MODEL_RELATIONS:  # every single-model label relation() can give
        assert "ensemble" not in rel
