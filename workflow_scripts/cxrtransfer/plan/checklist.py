"""The evaluation checklist's extra white-box runs (Carlini et al. 2019, Athalye et al. 2018),
derived from the grid: nobody lists them in the config.

For every target that the grid attacks white-box (a set whose source is one of its own data
task's targets) with a per-image attack, at the largest eps it is attacked at, one job runs
three variants of that attack on the target's test images with the target loaded once:

* ``single_step``: the same attack as one step of size eps (FGSM; Goodfellow et al. 2015);
  an iterative attack weaker than it suggests gradient masking;
* ``unbounded``: the same attack at a budget that constrains nothing (255/255 for L-inf, the
  image's L2 diameter for L2), in ``checklist.unbounded_steps`` steps of budget / steps:
  adversarial AUROC must reach about 0;
* ``more_steps``: the same attack with ``checklist.steps_factor`` times its steps: if that is
  much stronger, the grid's attack had not converged.

A single-step attack (FGSM) gets only its unbounded run.

The checks themselves (over these runs and the grid's cells) are ``evaluate.checklist``'s.
Pure Python: the Snakefile imports it at parse time.
"""

from __future__ import annotations

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import spec_from_config
from cxrtransfer.core.paths import eps_label
from cxrtransfer.plan import study as plan
from cxrtransfer.plan.adversarial_checks import adversarial

# The unbounded L-inf budget (1/255 units): every pixel may take any value.
UNBOUNDED_LINF = 255.0


def unbounded_l2(config: dict) -> float:
    """The unbounded L2 budget ([0, 1] pixel units): ``checklist.unbounded_eps_l2``, or the L2
    norm of the largest perturbation an image can take, its diameter sqrt(H x W)."""
    diameter = float(config["data"]["image_size"])  # sqrt(side * side) for one channel
    value = config.get("checklist", {}).get("unbounded_eps_l2")
    return diameter if value is None else float(value)


def check_checklist_config(config: dict) -> None:
    """Refuse an "unbounded" L2 budget that bounds: below the image's L2 diameter an L2 attack
    cannot reach every image, and the check would flag a healthy attack."""
    value = config.get("checklist", {}).get("unbounded_eps_l2")
    side = int(config["data"]["image_size"])
    if value is not None and float(value) < side:
        raise WorkflowError(
            f"checklist.unbounded_eps_l2 = {value} is an L2 norm in [0, 1] pixel units (not "
            f"1/255 units); an unbounded L2 attack on {side} x {side} images needs at least "
            f"their diameter sqrt({side} x {side}) = {side}. Remove the key (the diameter is "
            "the default) or set it to at least that."
        )


def enabled(config: dict) -> bool:
    return bool(config.get("checklist", {}).get("enabled", True))


def white_box_cells(config: dict) -> dict[str, dict[str, float]]:
    """{target: {attack: largest eps}} of the grid's white-box cells of per-image attacks."""
    universal = set(plan.universal_attacks(config))
    out: dict[str, dict[str, float]] = {}
    for s in plan.adversarial_sets(config, controls=False):
        if s.attack in universal or s.source not in plan.targets_for(config, s.data_task):
            continue
        eps = plan.eps_value(config, s.attack, s.eps)
        attacks = out.setdefault(s.source, {})
        attacks[s.attack] = max(eps, attacks.get(s.attack, 0.0))
    return out


def targets(config: dict) -> list[str]:
    """The targets that get a checklist job."""
    return sorted(white_box_cells(config)) if enabled(config) else []


def runs(config: dict, target: str) -> list[dict]:
    """The checklist job's runs on one target: per white-box attack, its three variants
    (an FGSM only its unbounded one; ``attack``/``eps``: the grid's cell checked; ``config``: the variant's attack entry;
    ``variant_eps``/``variant_steps``: its budget and steps)."""
    factor = int(config.get("checklist", {}).get("steps_factor", 2))
    out = []
    for attack, eps in sorted(white_box_cells(config)[target].items()):
        cfg = dict(config["attacks"][attack])
        steps = spec_from_config(cfg, eps).steps
        linf = plan.attack_norm(config, attack) == "linf"
        unbounded = UNBOUNDED_LINF if linf else unbounded_l2(config)
        n = int(config.get("checklist", {}).get("unbounded_steps", 16))
        # its own steps: the grid's step fraction at eps 255 overshoots (3 steps of 87 grey
        # levels left the test config's models at AUROC 0.50 and 0.41, 12 of 21 at 0.01 and 0)
        free = {k: v for k, v in cfg.items() if k != "step"} | {"steps": n, "step_fraction": 1 / n}
        variants = [("unbounded", free, unbounded, n)]
        if steps > 1:  # an iterative attack: its single-step and longer versions
            variants = [
                ("single_step", single_step(cfg), eps, 1),
                *variants,
                ("more_steps", {**cfg, "steps": steps * factor}, eps, steps * factor),
            ]
        for variant, vcfg, veps, vsteps in variants:
            spec_from_config(vcfg, veps)  # a variant that cannot run fails the plan, not a job
            out.append(
                {
                    "attack": attack,
                    "eps": eps,
                    "eps_label": eps_label(eps),
                    "variant": variant,
                    "config": plan.canon(vcfg),
                    "variant_eps": veps,
                    "variant_steps": int(vsteps),
                }
            )
    return out


# What only an iterative attack has (FGSM refuses them): momentum (and NI's look-ahead on it),
# restarts, and the number of steps.
ITERATIVE_ONLY = ("momentum", "nesterov", "restarts", "steps")


def single_step(cfg: dict) -> dict:
    """The attack entry as one step of size eps (FGSM), its other settings (TI, DI, SI, EOT)
    kept."""
    return {k: v for k, v in cfg.items() if k not in ITERATIVE_ONLY} | {"method": "fgsm"}


def no_base_models(config: dict) -> list[str]:
    """Adversarially trained models with nothing to compare their robustness with (neither
    ``robust_base`` nor ``init_from``): the checklist says so instead of checking."""
    return sorted(
        n
        for n, m in config["models"].items()
        if adversarial(config, n) and not (m.get("robust_base") or m.get("init_from"))
    )
