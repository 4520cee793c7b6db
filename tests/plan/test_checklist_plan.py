"""The evaluation checklist's extra white-box runs, derived from the grid (plan.checklist)."""

import copy

import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import spec_from_config
from cxrtransfer.plan import checklist, validate
from cxrtransfer.plan import study as plan


@pytest.fixture(scope="module")
def demo(root):
    return validate.from_files([root / "config" / "config.yaml"])


def _white_box(config):
    """(target, attack, eps) of every white-box per-image cell of the grid, read off the sets."""
    out = {}
    for s in plan.adversarial_sets(config, controls=False):
        if config["attacks"][s.attack]["method"] == "uap":
            continue
        if s.source in plan.targets_for(config, s.data_task):
            eps = plan.eps_value(config, s.attack, s.eps)
            out[(s.source, s.attack)] = max(eps, out.get((s.source, s.attack), 0))
    return out


def test_every_white_box_attack_gets_its_three_variants_at_its_largest_eps(demo):
    wanted = _white_box(demo)
    assert wanted  # the demo attacks its models white-box
    got = {}
    for target in checklist.targets(demo):
        for r in checklist.runs(demo, target):
            got.setdefault((target, r["attack"], r["eps"]), []).append(r["variant"])
    assert {(t, a, e) for (t, a), e in wanted.items()} == set(got)
    assert all(sorted(v) == ["more_steps", "single_step", "unbounded"] for v in got.values())
    # ensembles attack no target white-box; the universal attack has no per-image variants
    assert not [t for t in checklist.targets(demo) if "+" in t]
    assert not [k for k in got if demo["attacks"][k[1]]["method"] == "uap"]


@pytest.mark.parametrize("target_index", range(3))
def test_the_variants_are_the_attack_made_single_step_unbounded_and_longer(demo, target_index):
    """Every run of every target is a valid attack (the momentum attack's single step too)."""
    target = sorted(checklist.targets(demo), key=lambda t: -len(checklist.runs(demo, t)))[
        target_index
    ]
    for r in checklist.runs(demo, target):
        grid = demo["attacks"][r["attack"]]
        steps = spec_from_config(grid, r["eps"]).steps
        spec = spec_from_config(dict(r["config"]), r["variant_eps"])
        if r["variant"] == "single_step":
            assert (spec.method, spec.steps, spec.step) == ("fgsm", 1, r["eps"])
        elif r["variant"] == "unbounded":
            n = demo["checklist"]["unbounded_steps"]
            assert spec.eps == 255 and spec.steps == n == r["variant_steps"]
            assert spec.step * n == pytest.approx(255)
        else:
            assert spec.steps == 2 * steps == r["variant_steps"] and spec.eps == r["eps"]
            assert spec.step == pytest.approx(spec_from_config(grid, r["eps"]).step)


def _l2_study(demo, **checklist_keys):
    config = copy.deepcopy(demo)
    config["attacks"]["pgd_l2"] = {"method": "pgd", "norm": "l2", "steps": 4}
    config["eps_l2"] = [0.5]
    config["grid"].append(
        {"sources": ["pneumothorax_resnet50"], "data_task": "own", "attacks": ["pgd_l2"]}
    )
    config["checklist"] = {**config["checklist"], **checklist_keys}
    return config


def test_an_l2_attack_is_unbounded_in_its_own_unit(demo):
    config = _l2_study(demo)
    runs = checklist.runs(config, "pneumothorax_resnet50")
    unbounded = [r for r in runs if r["attack"] == "pgd_l2" and r["variant"] == "unbounded"]
    assert [r["variant_eps"] for r in unbounded] == [float(config["data"]["image_size"])]
    linf = [r for r in runs if r["attack"] == "pgd" and r["variant"] == "unbounded"]
    assert [r["variant_eps"] for r in linf] == [255.0]


def test_an_unbounded_l2_budget_that_bounds_is_refused_naming_the_key_and_unit(demo):
    side = demo["data"]["image_size"]
    with pytest.raises(WorkflowError, match=r"checklist\.unbounded_eps_l2 = 8 .*L2 norm.*1/255"):
        checklist.check_checklist_config(_l2_study(demo, unbounded_eps_l2=8))
    checklist.check_checklist_config(_l2_study(demo, unbounded_eps_l2=side))


def test_a_disabled_checklist_plans_no_runs(demo):
    config = copy.deepcopy(demo)
    config["checklist"]["enabled"] = False
    assert checklist.targets(config) == [] and checklist.targets(demo)


def test_an_adversarially_trained_model_without_a_base_is_named(demo):
    config = copy.deepcopy(demo)
    adv = {"eps": 2, "steps": 3, "step_fraction": 0.5}
    config["models"]["alone"] = {**config["models"]["pneumothorax_resnet50"]}
    config["models"]["alone"]["training"] = {"adversarial": adv}
    config["models"]["with_base"] = {**config["models"]["alone"], "robust_base": "alone"}
    assert checklist.no_base_models(config) == ["alone"]


def test_a_single_step_attack_gets_only_its_unbounded_run(demo):
    config = copy.deepcopy(demo)
    config["attacks"]["fgsm"] = {"method": "fgsm"}
    config["grid"].append({"sources": ["pneumothorax_resnet50"], "data_task": "own"})
    runs = checklist.runs(config, "pneumothorax_resnet50")
    assert [r["variant"] for r in runs if r["attack"] == "fgsm"] == ["unbounded"]
