"""Which adversarial sets the compare job compares on each deployed target, and what it reads.

One job per deployed target (``tasks.<task>.deployed``): the sets of its task's test images
(noise controls apart: each set's own control is compared in the evaluate job) are compared in
matched pairs at the same eps, where the pair differs in one thing only:

* ``same source``: two attacks of one norm from the same source (which attack transfers more);
* ``same attack``: the same attack from two sources, which covers an ensemble against each of
  its members and the sources of two relations (which source, or relation, transfers more).

Relations are measured in the evaluation (shared patients, weights), so the plan compares every
pair of sources and the summary picks the pairs it needs. Pure Python (parsed by the Snakefile).
"""

from __future__ import annotations

from itertools import combinations

from cxrtransfer.core import paths as P
from cxrtransfer.plan import study as plan


def deployed_targets(config: dict) -> dict[str, str]:
    """{deployed target: its data task} of every task that adversarial sets are made on."""
    tasks = sorted({s.data_task for s in plan.adversarial_sets(config, controls=False)})
    return {plan.deployed_target(config, t): t for t in tasks}


def compared_sets(config: dict, target: str) -> list[plan.AdvSet]:
    """The (non-control) sets of the deployed target's data task, in a fixed order."""
    task = deployed_targets(config)[target]
    sets = [s for s in plan.adversarial_sets(config, controls=False) if s.data_task == task]
    return sorted(sets, key=lambda s: (float(s.eps), s.source, s.attack))


def compared_pairs(config: dict, sets: list[plan.AdvSet]) -> list[dict]:
    """Matched pairs of ``sets`` ({a, b, kind}, indices into ``sets``): same eps, and the same
    source with two attacks of one norm, or the same attack from two sources."""
    pairs = []
    for i, j in combinations(range(len(sets)), 2):
        a, b = sets[i], sets[j]
        if a.eps != b.eps:
            continue
        if a.source == b.source and plan.attack_norm(config, a.attack) == plan.attack_norm(
            config, b.attack
        ):
            pairs.append({"a": i, "b": j, "kind": "same source"})
        elif a.attack == b.attack and a.source != b.source:
            pairs.append({"a": i, "b": j, "kind": "same attack"})
    return pairs


def compare_settings(config: dict, target: str) -> dict:
    """The compare job's params: its data task, sets, pairs and each source's task."""
    sets = compared_sets(config, target)
    return {
        "data_task": deployed_targets(config)[target],
        "sets": [{"source": s.source, "attack": s.attack, "eps": s.eps} for s in sets],
        "pairs": compared_pairs(config, sets),
        "source_tasks": {s: plan.source_task(config, s) for s in sorted({x.source for x in sets})},
    }


def compare_inputs(config: dict, target: str) -> dict:
    """The compare job's inputs: the target's clean and adversarial predictions of the sets (in
    ``compared_sets`` order) and the metrics.json of the target and every source."""
    task = deployed_targets(config)[target]
    sets = compared_sets(config, target)
    inputs: dict = {
        "clean": P.PRED_CLEAN.format(target=target, data_task=task),
        "adv": [P.PRED_ADV.format(target=target, **s.__dict__) for s in sets],
    }
    for m in sorted({target, *(s.source for s in sets)}):
        inputs[f"metrics__{m}"] = P.MODEL_METRICS.format(model=m)
    return inputs


def comparison_files(config: dict) -> list[str]:
    """Every compare job's output (the tables job's input)."""
    return [P.COMPARISONS.format(target=t) for t in sorted(deployed_targets(config))]
