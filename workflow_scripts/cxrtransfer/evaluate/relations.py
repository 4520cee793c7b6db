"""How a source model relates to a target: measured factors and the label derived from them.

Pure Python. The factors follow Bortsova et al. 2021 (architecture, initialisation, development
data): they are computed from what the two models actually share (their recorded settings and
the patients each one trained on), never from model names, so a label that claims independent
training data cannot be given to a pair that shares patients.
"""

from __future__ import annotations

from cxrtransfer import WorkflowError

# Every relation label with its plot abbreviation, in plot and summary order (strongest
# expected attack first). An ensemble source has labels of its own, derived from its members'
# relations (``ensemble_relation``), so its cells are never pooled with single-model cells.
RELATIONS = {
    "white-box": "WB",
    "same network, other defence": "ND",
    "ensemble incl. the target": "E+T",
    "ensemble incl. a surrogate of the target": "E+S",
    "same-data surrogate": "S=",
    "overlapping-data surrogate": "S~",
    "surrogate": "S",
    "ensemble of other architectures": "E-XA",
    "same-data cross-architecture": "XA=",
    "overlapping-data cross-architecture": "XA~",
    "cross-architecture": "XA",
    "cross-task ensemble": "E-XT",
    "cross-task": "XT",
}
ENSEMBLE_RELATIONS = tuple(r for r in RELATIONS if "ensemble" in r)
SINGLE_MODEL_RELATIONS = tuple(r for r in RELATIONS if r not in ENSEMBLE_RELATIONS)
FACTOR_COLUMNS = (
    "same_model",
    "same_arch",
    "same_pretraining",
    "same_task",
    "same_seed",
    "patient_overlap",
    "same_network",
    "same_defence",
)


def factors(
    source: str,
    target: str,
    source_settings: dict,
    target_settings: dict,
    source_patients: set[int],
    target_patients: set[int],
    source_network: str | None = None,
    target_network: str | None = None,
) -> dict:
    """What source and target share. ``patient_overlap`` is the fraction of the target's
    training patients that the source also trained on (0 = disjoint development data).
    ``same_network``: the networks inside have equal weights (``source_network`` /
    ``target_network``: the sha256 of their weights, recorded in metrics.json; unknown: False);
    ``same_defence``: the same input defence (``defence`` of the settings, default none)."""
    for name, s in ((source, source_settings), (target, target_settings)):
        missing = [k for k in ("arch", "task", "pretrained", "seed") if k not in s]
        if missing:
            raise WorkflowError(f"Model '{name}': settings lack {', '.join(missing)}.")
    if not target_patients:
        raise WorkflowError(f"Model '{target}' recorded no training patients.")
    return {
        "same_model": source == target,
        "same_arch": source_settings["arch"] == target_settings["arch"],
        "same_pretraining": source_settings["pretrained"] == target_settings["pretrained"],
        "same_task": source_settings["task"] == target_settings["task"],
        # an ensemble's seed is its members' joined (e.g. "2+3"): compared as text
        "same_seed": str(source_settings["seed"]) == str(target_settings["seed"]),
        "patient_overlap": len(source_patients & target_patients) / len(target_patients),
        "same_network": source_network is not None and source_network == target_network,
        "same_defence": source_settings.get("defence", "none")
        == target_settings.get("defence", "none"),
    }


def relation(f: dict, source_task: str, data_task: str) -> str:
    """The label of a cell from its measured factors (see ``RELATIONS``).

    white-box: the source is the target (or the same network behind the same defence). same
    network, other defence: the networks are the same but one of the two is behind an input
    defence the other is not (an attack on the undefended model evaluated on its defended
    version is the non-adaptive attack on the defence). cross-task: the source was trained on
    another task than the images attacked. Otherwise surrogate (same architecture) or cross-architecture,
    prefixed by what the development data share: none (disjoint patients, no prefix), part
    ("overlapping-data") or all of the target's patients ("same-data").
    """
    if f["same_model"]:
        return "white-box"
    if f.get("same_network"):
        return "white-box" if f.get("same_defence", True) else "same network, other defence"
    if source_task != data_task:
        return "cross-task"
    kind = "surrogate" if f["same_arch"] else "cross-architecture"
    overlap = f["patient_overlap"]
    if overlap <= 0:
        return kind
    return f"{'same' if overlap >= 1 else 'overlapping'}-data {kind}"


def ensemble_relation(member_relations: list[str]) -> str:
    """The relation of an ensemble source to a target, from its members' own relations
    (``relation`` of each member): it includes the target (or the target's network) if a member
    is white-box or the same network; else a surrogate of the target if a member has the
    target's architecture; else it is an ensemble of other architectures; cross-task if every
    member was trained on another task. Never a single-model label: the string comparison of
    the joined architectures ("ResNet50+ResNet50V2" vs "ResNet50") called an ensemble with a
    same-architecture member "cross-architecture"."""
    rels = list(member_relations)
    unknown = sorted(set(rels) - set(SINGLE_MODEL_RELATIONS))
    if len(rels) < 2 or unknown:
        raise WorkflowError(
            f"An ensemble's relation needs the single-model relations of its (two or more) "
            f"members, got {rels}."
        )
    if any(r in ("white-box", "same network, other defence") for r in rels):
        return "ensemble incl. the target"
    if all(r == "cross-task" for r in rels):
        return "cross-task ensemble"
    if any(r.endswith("surrogate") for r in rels):
        return "ensemble incl. a surrogate of the target"
    return "ensemble of other architectures"
