"""The attacks' settings, each declared once: its type, bounds, unit, one-line meaning and the
papers' setting (``PARAMETERS``), and for each attack method the settings it takes with their
defaults (``ATTACKS``).

Everything else is derived from these declarations or tested against them: the keys
``spec_from_config`` and ``uap_spec_from_config`` accept and their defaults, the bound checks of
``AttackSpec`` and ``UapSpec`` (``check_value``), the attack section of
``config/config.schema.yaml`` (its properties, bounds, descriptions and filled-in defaults:
``tests/attacks/test_parameters.py``) and the parameter table of ``docs/ATTACKS.md``
(``python -m cxrtransfer.attacks.parameters`` prints it).

TensorFlow-free: the plan imports it when the Snakefile is parsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrtransfer import WorkflowError

# a default that depends on other settings (a uap's steps: 4 x ceil(eps / step))
DERIVED = "derived"
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


@dataclass(frozen=True)
class Parameter:
    """One attack setting. ``minimum``/``maximum`` are inclusive, ``above`` and ``below``
    exclusive (JSON schema's exclusiveMinimum and exclusiveMaximum); ``choices`` the values the schema admits; ``schema_fills``:
    the schema writes its default into every attack entry that lacks it (the default is then
    part of the entry's config, hence of its jobs' parameters); ``removed``: a setting that
    no longer exists, refused with this hint."""

    name: str
    type: type
    meaning: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple = ()
    schema_fills: bool = False
    reference: str = ""
    removed: str = ""

    def cast(self, value):
        """``value`` as this setting's Python type (a YAML 1 for a float setting is 1.0)."""
        return self.type(value)

    def bound(self) -> str:
        """The admitted values in words: "in [0, 1]", ">= 1", "> 0", "one of linf, l2"."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        low = None if self.minimum is None else f"{self.minimum:g}"
        high = None if self.maximum is None else f"{self.maximum:g}"
        if low is not None and high is not None:
            return f"in [{low}, {high}]"
        if self.above is not None and self.below is not None:
            return f"in ({self.above:g}, {self.below:g})"
        if self.above is not None:
            return f"> {self.above:g}" + ("" if high is None else f" and <= {high}")
        if low is not None:
            return f">= {low}"
        return "" if high is None else f"<= {high}"

    def admits(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.type in (int, float):
            v = float(value)
            return (
                math.isfinite(v)
                and (self.minimum is None or v >= self.minimum)
                and (self.maximum is None or v <= self.maximum)
                and (self.above is None or v > self.above)
                and (self.below is None or v < self.below)
            )
        return True

    def schema(self) -> dict:
        """This setting's JSON-schema property (without its default; see ``Attack``)."""
        out: dict = {"type": _JSON_TYPES[self.type]}
        if self.choices:
            out["enum"] = list(self.choices)
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("exclusiveMinimum", self.above),
            ("exclusiveMaximum", self.below),
        ):
            if value is not None:
                out[key] = value
        out["description"] = self.meaning
        return out


PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter(
            "method",
            str,
            "fgsm or pgd (per image), or uap (one universal perturbation per source, crafted on "
            "its training or validation images)",
            choices=("fgsm", "pgd", "uap"),
        ),
        Parameter(
            "norm",
            str,
            "the budget's norm: linf (eps in 1/255 per pixel) or l2 (the perturbation's L2 "
            "norm in [0, 1] pixel units); uap: linf only",
            choices=("linf", "l2"),
            schema_fills=True,
        ),
        Parameter(
            "step",
            float,
            "absolute step, in the units of the attack's eps (give step or step_fraction)",
            unit="eps",
            above=0,
        ),
        Parameter("step_fraction", float, "step as a fraction of eps", above=0, maximum=1),
        Parameter(
            "steps",
            int,
            "iterations: per-image attacks take this many steps; uap this many optimiser "
            "steps of one minibatch each (default 4 x ceil(eps / step); fewer than "
            "ceil(eps / step) cannot reach eps and are refused)",
            minimum=1,
            schema_fills=True,
            reference="10",
        ),
        Parameter(
            "targeted",
            bool,
            "minimise the loss of the opposite label instead of maximising the true label's",
            schema_fills=True,
        ),
        Parameter(
            "random_start",
            bool,
            "start from a uniformly drawn point of the eps ball",
            schema_fills=True,
        ),
        Parameter(
            "restarts",
            int,
            "runs per image, the strongest example kept (runs differ only with random_start, "
            "diversity_prob or variance_samples)",
            minimum=1,
            schema_fills=True,
        ),
        Parameter(
            "momentum",
            float,
            "MI-FGSM: decay factor mu of the accumulated, L1-normalised gradient (0 = off)",
            minimum=0,
            schema_fills=True,
            reference="1.0",
        ),
        Parameter(
            "diversity_prob",
            float,
            "DI-FGSM: probability of the random resize-and-pad transform (0 = off)",
            minimum=0,
            maximum=1,
            schema_fills=True,
            reference="0.5",
        ),
        Parameter(
            "diversity_scale",
            float,
            "DI-FGSM: largest padded size relative to the image",
            minimum=1,
            maximum=2,
            schema_fills=True,
            reference="1.1 (299 -> 330 px)",
        ),
        Parameter(
            "ti_kernel",
            int,
            "TI-FGSM: odd side of the Gaussian kernel (nsig 3) the gradient is smoothed with, "
            "at most data.image_size (0 or 1 = off; a kernel whose centre keeps more than half "
            "the weight does not smooth and is refused: 3 is, 5 keeps 0.36)",
            minimum=0,
            schema_fills=True,
            reference="15 at 299 px; 7 is common at 224 px; 5 suits 48-64 px",
        ),
        Parameter(
            "scales",
            int,
            "SI-FGSM: the gradient is the mean over x / 2^i, i = 0..scales-1, of the [0, 1] "
            "pixels (1 = off; costs scales x)",
            minimum=1,
            maximum=16,
            schema_fills=True,
            reference="5",
        ),
        Parameter(
            "nesterov",
            bool,
            "NI-FGSM: the gradient at the look-ahead x + step * momentum * g (needs momentum "
            "> 0; L-inf only)",
            schema_fills=True,
            reference="true, with momentum 1.0",
        ),
        Parameter(
            "variance_samples",
            int,
            "VMI-FGSM: neighbours per step whose gradients estimate the variance that tunes the "
            "next step (0 = off; costs (1 + variance_samples) x)",
            minimum=0,
            schema_fills=True,
            reference="20",
        ),
        Parameter(
            "variance_bound",
            float,
            "VMI-FGSM: the neighbours' radius as a multiple of eps (uniform in the L-inf box or "
            "the L2 ball)",
            above=0,
            schema_fills=True,
            reference="1.5",
        ),
        Parameter(
            "seed",
            int,
            "seed of the attack's random streams (random starts, DI, VMI; uap: the crafting "
            "order and the max_images draw)",
            schema_fills=True,
        ),
        Parameter(
            "eot_samples",
            int,
            "EOT: each gradient is the mean over this many evaluations of a randomised "
            "(defended) source (1 = off)",
            minimum=1,
            schema_fills=True,
        ),
        Parameter(
            "split",
            str,
            "uap: the source's images it is crafted on (train or val; test, the images it is "
            "evaluated on, is refused)",
            choices=("train", "val", "test"),
        ),
        Parameter(
            "max_images",
            int,
            "uap: at most this many crafting images, drawn with the attack's seed (0 = all)",
            minimum=0,
        ),
        Parameter(
            "loss_clamp",
            float,
            "uap: the per-image cross-entropy clamp of Shafahi et al. 2020",
            above=0,
        ),
        Parameter(
            "algorithm",
            str,
            "uap: how it is crafted: sgd (stochastic gradient ascent, Shafahi et al. 2020) or "
            "deepfool (Moosavi-Dezfooli et al. 2017, Algorithm 1: passes adding each unfooled "
            "image's minimal DeepFool perturbation)",
            choices=("sgd", "deepfool"),
            reference="deepfool (Hirano et al. 2021)",
        ),
        Parameter(
            "delta",
            float,
            "uap deepfool: stop once the decisions of at least 1 - delta of the crafting "
            "images have changed",
            above=0,
            below=1,
            reference="0.2 (Moosavi-Dezfooli et al. 2017)",
        ),
        Parameter(
            "max_passes",
            int,
            "uap deepfool: at most this many passes over the crafting images",
            minimum=1,
        ),
        Parameter(
            "overshoot",
            float,
            "uap deepfool: each DeepFool step goes (1 + overshoot) x the linearised distance",
            minimum=0,
            maximum=1,
            reference="0.02",
        ),
        Parameter(
            "deepfool_steps",
            int,
            "uap deepfool: at most this many linearised steps per image and pass",
            minimum=1,
            reference="10 (the authors' code)",
        ),
        Parameter(
            "epochs",
            int,
            "removed: uap counted passes over the crafting images, which on a small set could "
            "not reach eps; give steps instead",
            minimum=1,
            removed=(
                "epochs: a universal perturbation now counts optimiser steps, not passes over "
                "the crafting images (on a small set a pass is one step and cannot reach eps); "
                "replace epochs with steps (default 4 x ceil(eps / step))."
            ),
        ),
    )
}


@dataclass(frozen=True)
class Attack:
    """One attack method: what it is and the settings it takes, ``{name: default}`` (None: no
    default, e.g. step; ``DERIVED``: computed from other settings)."""

    method: str
    meaning: str
    defaults: dict

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.defaults)

    def default(self, name: str):
        return self.defaults[name]

    def schema_defaults(self) -> dict:
        """``{name: default}`` the schema fills into an entry of this method."""
        return {
            k: v
            for k, v in self.defaults.items()
            if PARAMETERS[k].schema_fills and v not in (None, DERIVED)
        }


_PER_IMAGE = {
    "method": None,
    "norm": "linf",
    "step": None,
    "step_fraction": 0.25,
    "steps": 10,
    "targeted": False,
    "random_start": False,
    "restarts": 1,
    "momentum": 0.0,
    "diversity_prob": 0.0,
    "diversity_scale": 1.1,
    "ti_kernel": 0,
    "scales": 1,
    "nesterov": False,
    "variance_samples": 0,
    "variance_bound": 1.5,
    "eot_samples": 1,
    "seed": 0,
}
ATTACKS: dict[str, Attack] = {
    a.method: a
    for a in (
        Attack("fgsm", "one signed gradient step of size eps (Goodfellow et al. 2015)", _PER_IMAGE),
        Attack(
            "pgd",
            "projected gradient descent (Madry et al. 2018), with the transfer variants MI, DI, "
            "TI, SI, NI and VMI and EOT switched on by their settings",
            _PER_IMAGE,
        ),
        Attack(
            "uap",
            "one universal L-inf perturbation per source, crafted on its training or validation "
            "images by stochastic gradient ascent over minibatches (Shafahi et al. 2020) or by "
            "DeepFool passes (Moosavi-Dezfooli et al. 2017)",
            {
                "method": None,
                "norm": "linf",
                "step": None,
                "step_fraction": 0.1,
                "steps": DERIVED,
                "split": "val",
                "max_images": 0,
                "loss_clamp": 10.0,
                "seed": 0,
                "algorithm": "sgd",
                "delta": 0.2,
                "max_passes": 10,
                "overshoot": 0.02,
                "deepfool_steps": 10,
            },
        ),
    )
}


def schema_filled() -> dict:
    """``{name: default}`` of the settings whose default the schema writes into every attack
    entry, whatever its method (the same default wherever a setting is declared: tested).
    Not ``steps``: the schema fills it in for the per-image attacks only."""
    return {k: v for a in ATTACKS.values() for k, v in a.schema_defaults().items() if k != "steps"}


def check_value(name: str, value) -> None:
    """Refuse a value of setting ``name`` outside its declared bounds, saying which bounds and
    what the setting means."""
    p = PARAMETERS[name]
    if not p.admits(value):
        raise WorkflowError(f"{name} must be {p.bound()} ({p.meaning}), got {value!r}.")


def check_keys(method: str, cfg: dict) -> None:
    """Refuse settings the attack ``method`` does not take (and removed ones, with their hint)."""
    for key in sorted(set(cfg) & {k for k, p in PARAMETERS.items() if p.removed}):
        raise WorkflowError(PARAMETERS[key].removed)
    keys = ATTACKS[method].keys
    unknown = sorted(set(cfg) - keys)
    if unknown:
        raise WorkflowError(
            f"setting(s) {', '.join(unknown)} have no meaning for method {method}; allowed: "
            f"{', '.join(sorted(keys))}."
        )


def table_markdown() -> str:
    """The parameter table of docs/ATTACKS.md: every setting, its defaults per attack, bounds,
    unit, meaning and the papers' setting."""
    # Hand-written, not pandas' to_markdown: tabulate pads every cell to its column's width, so
    # in docs/ATTACKS.md one longer meaning would rewrite every row of the table (and the short
    # rows would carry ~200 spaces); and this module, imported when the Snakefile is parsed and
    # by the attack jobs, stays free of third-party packages.

    def shown(v) -> str:
        if v is None:
            return "-"
        if v is DERIVED:
            return "derived"
        return f"`{str(v).lower() if isinstance(v, bool) else v}`"

    per_image, uap = ATTACKS["pgd"], ATTACKS["uap"]
    rows = [
        "| setting | fgsm, pgd | uap | admits | meaning | papers' setting |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in PARAMETERS.items():
        if p.removed:
            continue
        cells = [
            f"`{name}`",
            shown(per_image.defaults[name]) if name in per_image.keys else "n/a",
            shown(uap.defaults[name]) if name in uap.keys else "n/a",
            p.bound() + (f" ({p.unit} units)" if p.unit else ""),
            p.meaning,
            p.reference or "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table_markdown(), end="")
