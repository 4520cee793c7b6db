"""The config checks of adversarial training and fine-tuning the JSON schema cannot express:
``training.adversarial`` (the default block and each model's own), ``models.<name>.init_from``,
``models.<name>.robust_base`` and an adversarially trained source's budgets in the grid (run by
``plan.checks.check_config``)."""

from __future__ import annotations

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import spec_from_config
from cxrtransfer.plan.study import attack_norm, entry_eps, is_multilabel


def check_adversarial_training(config: dict) -> None:
    """training.adversarial (defaults and each model's own), models.<name>.init_from and
    models.<name>.robust_base; raise WorkflowError naming the key."""
    _check_blocks(config)
    for name in config["models"]:
        if adversarial(config, name) and is_multilabel(config, name):
            own = "adversarial" in config["models"][name].get("training", {})
            where = f"models.{name}.training.adversarial" if own else "training.adversarial"
            raise WorkflowError(
                f"{where}: '{name}' is a multi-label model; "
                "adversarial training of multi-label models is not implemented (it trains the "
                "2-class contract). Give it its own training: block without adversarial."
            )
    _check_init_from(config["models"])
    _check_robust_base(config)
    _check_robust_sources(config)


def adversarial(config: dict, name: str) -> dict | None:
    """Model ``name``'s adversarial training block (its own or the default), or None."""
    m = config["models"][name]
    return {**config.get("training", {}), **(m.get("training") or {})}.get("adversarial")


def _check_blocks(config: dict) -> None:
    blocks = [("training.adversarial", config.get("training", {}).get("adversarial"))]
    blocks += [
        (f"models.{n}.training.adversarial", m.get("training", {}).get("adversarial"))
        for n, m in config["models"].items()
    ]
    for key, adv in blocks:
        if adv is None:
            continue
        eps = adv.get("eps")
        if not isinstance(eps, int | float) or not 0 < eps <= 255:
            raise WorkflowError(
                f"{key}.eps: {eps!r} is outside the data range; adversarial training eps is "
                "in 1/255 units like the study's eps (0 < eps <= 255; 255 already allows any "
                "image, typical values are 2-8)."
            )
        cfg = {"method": "pgd", "norm": "linf"}
        cfg.update(
            {k: adv[k] for k in ("steps", "step_fraction", "random_start", "seed") if k in adv}
        )
        try:
            spec_from_config(cfg, eps)
        except WorkflowError as err:
            raise WorkflowError(f"{key}: {err}") from None
        if not 0 <= adv.get("fraction", 0.5) <= 1:
            raise WorkflowError(f"{key}.fraction: {adv['fraction']} is not in [0, 1].")


def _check_init_from(models: dict) -> None:
    for name, m in models.items():
        init = m.get("init_from")
        if init is None:
            continue
        key = f"models.{name}.init_from"
        if init == name:
            raise WorkflowError(f"{key}: a model cannot be fine-tuned from itself.")
        if init not in models:
            raise WorkflowError(
                f"{key}: '{init}' is not a configured model; configured: {sorted(models)}."
            )
        for fact in ("task", "arch"):
            if models[init][fact] != m[fact]:
                raise WorkflowError(
                    f"{key}: '{init}' has {fact} '{models[init][fact]}', this model "
                    f"'{m[fact]}'; a model is fine-tuned from a checkpoint of its own task and "
                    "architecture."
                )
        chain = [name]
        while init is not None:
            if init in chain:
                cycle = " -> ".join([*chain[chain.index(init) :], init])
                raise WorkflowError(f"{key}: the init_from chain has a cycle ({cycle}).")
            chain.append(init)
            init = models[init].get("init_from") if init in models else None


def _check_robust_base(config: dict) -> None:
    """robust_base: a configured model of the same task, not adversarially trained, named by an
    adversarially trained model; with init_from its base is that model."""
    models = config["models"]
    for name, m in models.items():
        base = m.get("robust_base")
        if base is None:
            continue
        key = f"models.{name}.robust_base"
        if not adversarial(config, name):
            raise WorkflowError(
                f"{key}: '{name}' is not adversarially trained (no training.adversarial); "
                "robust_base names the model an adversarially trained model must be more "
                "robust than. Remove it or give the model training.adversarial."
            )
        if base == name:
            raise WorkflowError(f"{key}: a model cannot be its own robust base.")
        if base not in models:
            raise WorkflowError(
                f"{key}: '{base}' is not a configured model; configured: {sorted(models)}."
            )
        if models[base]["task"] != m["task"]:
            raise WorkflowError(
                f"{key}: '{base}' has task '{models[base]['task']}', this model "
                f"'{m['task']}'; the base is attacked on this model's validation images, so it "
                "must be a model of the same task."
            )
        if adversarial(config, base):
            raise WorkflowError(
                f"{key}: '{base}' is itself adversarially trained; the robustness gate compares "
                "an adversarially trained model with a clean one. Name a model without "
                "training.adversarial."
            )
        init = m.get("init_from")
        if init is not None and init != base:
            raise WorkflowError(
                f"{key}: '{name}' is fine-tuned from '{init}' (init_from), which is its base; "
                f"remove robust_base or make it '{init}'."
            )


def _source_budgets(config: dict) -> dict[str, set[float]]:
    """{model: the L-inf eps (1/255) the grid crafts examples on it at}, for the models named
    as single sources (``all`` included; ensembles and unknown names left to the grid check)."""
    out: dict[str, set[float]] = {}
    for entry in config.get("grid", []):
        sources = entry.get("sources")
        names = list(config["models"]) if sources == "all" else sources or []
        attacks = entry.get("attacks", "all")
        attacks = list(config["attacks"]) if attacks == "all" else attacks
        for a in (a for a in attacks if a in config["attacks"]):
            if attack_norm(config, a) != "linf":
                continue
            for n in (n for n in names if isinstance(n, str) and n in config["models"]):
                out.setdefault(n, set()).update(float(e) for e in entry_eps(config, entry, a))
    return out


def _check_robust_sources(config: dict) -> None:
    """An adversarially trained model used as a source must be attacked at some L-inf eps at or
    above its training eps: below it, PGD stays inside the region the model was trained to
    resist, so its examples say nothing about a robust surrogate (Springer et al. 2021 train
    the surrogate at a small eps and attack at larger ones)."""
    for name, budgets in _source_budgets(config).items():
        adv = adversarial(config, name)
        if not adv or not budgets or float(adv["eps"]) <= max(budgets):
            continue
        own = "adversarial" in (config["models"][name].get("training") or {})
        key = f"models.{name}.training.adversarial.eps" if own else "training.adversarial.eps"
        shown = ", ".join(f"{e:g}" for e in sorted(budgets))
        raise WorkflowError(
            f"{key}: '{name}' is adversarially trained at eps {float(adv['eps']):g}, above "
            f"every L-inf eps the grid attacks it at as a source ({shown}); a robust surrogate "
            "is trained at a small eps and attacked at that eps or larger. Lower its training "
            "eps, or give its grid entry an eps at least as large."
        )
