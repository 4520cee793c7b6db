"""Attack configurations: ``AttackSpec`` (one validated attack), ``spec_from_config`` (one
entry of the config's ``attacks:`` mapping) and ``stream_seed`` (the attack's random streams).

Units: L-inf budgets and steps are in 1/255 units (eps 8 means 8/255 per pixel); L2 budgets and
steps are L2 norms of the perturbation in [0, 1] pixel units (eps 1.0 means ||delta||_2 <= 1).

Random numbers (random starts, DI transforms, VMI neighbours) come from stateless Philox ops
seeded per call: ``run_attack_batches`` derives one seed per batch with ``stream_seed`` from the
attack seed, the attack configuration, the caller's stream keys (source model, data task,
shard) and the batch index, so runs are reproducible and different batches/shards/sources/eps
get independent draws.

TensorFlow-free: the plan imports ``spec_from_config`` when the Snakefile is parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.parameters import ATTACKS, PARAMETERS, check_keys, check_value

METHODS = ("fgsm", "pgd")
NORMS = PARAMETERS["norm"].choices
EPS_UNITS = {"linf": "1/255", "l2": "L2, [0,1] pixels"}
ALG = "philox"  # fixed stateless RNG: the same numbers with and without XLA
# A TI kernel whose centre pixel carries more than this share of its weight does not smooth
# (nsig 3: size 3 has 0.957, size 5 0.358): it is refused rather than run as a no-op.
TI_MAX_CENTRE_WEIGHT = 0.5


def steps_to_reach(eps: float, step: float) -> int:
    """The fewest steps of size ``step`` whose sum reaches ``eps`` (same units): an iterative
    attack (or a universal perturbation) with fewer cannot reach the budget its label says."""
    return math.ceil(eps / step - 1e-9)


# The transfer-attack settings added after the others, with their "off" values: a spec with all
# of them off is the attack it was before they existed and keeps its random streams (they enter
# ``stream_seed`` only when on; ``variance_bound`` only matters with ``variance_samples``).
_NEW_KEYS_OFF = {
    "ti_kernel": lambda s: s.ti_kernel <= 1,
    "scales": lambda s: s.scales == 1,
    "nesterov": lambda s: not s.nesterov,
    "variance_samples": lambda s: s.variance_samples == 0,
    "variance_bound": lambda s: s.variance_samples == 0,
    "eot_samples": lambda s: s.eot_samples == 1,
}


# the per-image attacks' settings and defaults, declared in attacks.parameters
_DEFAULT = ATTACKS["pgd"].defaults
_CHECKED = sorted(ATTACKS["pgd"].keys - {"method", "step", "step_fraction"})


def _unit(norm: str) -> str:
    return EPS_UNITS.get(norm, "?")


def ti_kernel_weights(size: int, nsig: float = 3.0) -> np.ndarray:
    """TI-FGSM's Gaussian kernel, float32 (size, size) summing to 1: the authors' ``gkern``
    (x = linspace(-nsig, nsig, size), the outer product of the normal pdf at x, normalised).
    Size 1 is the identity [[1]]."""
    if size < 1 or size % 2 == 0:
        raise WorkflowError(f"ti_kernel must be an odd size >= 1, got {size}.")
    x = np.linspace(-nsig, nsig, int(size))
    k1 = np.exp(-0.5 * x**2)  # the normal pdf up to its constant, which the sum divides out
    k = np.outer(k1, k1)
    return (k / k.sum()).astype(np.float32)


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration (validated on construction).

    ``eps`` and ``step`` depend on ``norm``:

    - ``linf``: 1/255 units, as before (eps 8 = 8/255 per pixel; the stored uint8 perturbation
      is bounded by floor(eps) grey levels);
    - ``l2``: the L2 norm of the perturbation in [0, 1] pixel units, the usual convention
      (e.g. eps 0.5, 1.0, 2.0 for small grayscale images; the stored uint8 perturbation d in
      grey levels satisfies ||d||_2 / 255 <= eps, checked exactly on integers).

    ``eps_float`` / ``step_float`` give both in [0, 1] pixel units as the attack uses them.

    Transfer attacks (all off by default; any combination, see ``make_attack``):

    - ``momentum`` mu > 0: MI-FGSM; ``diversity_prob`` / ``diversity_scale``: DI-FGSM;
    - ``ti_kernel`` k (odd; 0 or 1 = off): TI-FGSM, the gradient is convolved with the k x k
      Gaussian kernel ``ti_kernel_weights(k)`` (nsig 3, as the authors' ``gkern``);
    - ``scales`` m (1 = off): SI-FGSM, the mean of the gradients at x / 2^i, i = 0..m-1;
    - ``nesterov``: NI-FGSM, the gradient at the look-ahead x + step * mu * g (needs momentum);
    - ``variance_samples`` N (0 = off) and ``variance_bound`` beta: VMI-FGSM, the gradient is
      tuned by the variance of the previous step, estimated from N points drawn uniformly in the
      ``norm`` ball of radius beta * eps around it;
    - ``eot_samples`` E (1 = off): EOT (Athalye et al. 2018), every loss gradient is the mean of
      E evaluations of the model, for a source whose output is random (a defended model with a
      randomised input transform draws anew at each evaluation).
    """

    method: str
    norm: str = _DEFAULT["norm"]
    eps: float = 8.0
    step: float = 2.0
    steps: int = _DEFAULT["steps"]
    targeted: bool = _DEFAULT["targeted"]
    random_start: bool = _DEFAULT["random_start"]
    restarts: int = _DEFAULT["restarts"]
    momentum: float = _DEFAULT["momentum"]
    diversity_prob: float = _DEFAULT["diversity_prob"]
    diversity_scale: float = _DEFAULT["diversity_scale"]
    seed: int = _DEFAULT["seed"]
    ti_kernel: int = _DEFAULT["ti_kernel"]
    scales: int = _DEFAULT["scales"]
    nesterov: bool = _DEFAULT["nesterov"]
    variance_samples: int = _DEFAULT["variance_samples"]
    variance_bound: float = _DEFAULT["variance_bound"]
    eot_samples: int = _DEFAULT["eot_samples"]

    def __post_init__(self):
        for name in _CHECKED:  # each setting within its declared bounds (attacks.parameters)
            check_value(name, getattr(self, name))
        self._check_method_and_budget()
        self._check_momentum_and_diversity()
        self._check_smoothing_and_scales()
        self._check_variance_and_eot()

    def _check_method_and_budget(self):
        """Method and eps; PGD's step reaches eps."""
        if self.method not in METHODS:
            raise WorkflowError(
                f"Unknown attack method '{self.method}'; use one of {', '.join(METHODS)}."
            )
        unit = _unit(self.norm)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise WorkflowError(f"Attack eps must be > 0 ({unit} units), got {self.eps}.")
        if self.method == "pgd":
            if not (self.step > 0 and math.isfinite(self.step)):
                raise WorkflowError(f"Attack step must be > 0 ({unit} units), got {self.step}.")
            if self.steps > 1 and self.step > self.eps:
                raise WorkflowError(
                    f"Attack step {self.step} is larger than eps {self.eps} ({unit} units) for "
                    f"an iterative attack with {self.steps} steps; use step <= eps "
                    "(e.g. step_fraction: 0.25)."
                )
            if not self.random_start and self.steps < steps_to_reach(self.eps, self.step):
                raise WorkflowError(
                    f"Attack steps x step = {self.steps} x {self.step:g} = "
                    f"{self.steps * self.step:g} is below eps {self.eps:g} ({unit} units): the "
                    "attack cannot reach the budget its label says; give more steps or a larger "
                    "step (or random_start: true)."
                )

    def _check_momentum_and_diversity(self):
        """MI-FGSM's momentum and restarts need an iterative attack."""
        if self.method == "fgsm" and (self.momentum or self.restarts > 1):
            raise WorkflowError("Attack momentum and restarts need method: pgd (FGSM is one step).")

    def _check_smoothing_and_scales(self):
        """TI-FGSM's kernel smooths; SI-FGSM's scales; NI-FGSM's look-ahead."""
        if self.ti_kernel > 1 and self.ti_kernel % 2 == 0:
            raise WorkflowError(
                f"ti_kernel must be 0 or 1 (off) or an odd kernel size >= 3 (TI-FGSM's Gaussian "
                f"kernel is centred on a pixel), got {self.ti_kernel}."
            )
        if self.ti_kernel > 1:
            centre = float(ti_kernel_weights(self.ti_kernel).max())
            if centre > TI_MAX_CENTRE_WEIGHT:
                raise WorkflowError(
                    f"ti_kernel {self.ti_kernel} does not smooth: its Gaussian (nsig 3) puts "
                    f"{centre:.3f} of its weight on the centre pixel (more than "
                    f"{TI_MAX_CENTRE_WEIGHT}), so the attack would be the plain one under another "
                    "name; use 5 or more (5 at 48-64 px, 7 at 224 px, the paper's 15 at 299 px)."
                )
        if self.nesterov and not self.momentum > 0:
            raise WorkflowError(
                "nesterov: true needs momentum > 0 (NI-FGSM looks ahead along the momentum; "
                "the papers use momentum 1.0)."
            )
        if self.nesterov and self.norm != "linf":
            raise WorkflowError(
                "nesterov: true is implemented for norm: linf only (the look-ahead "
                "x + step * momentum * g of Lin et al. is defined for sign steps)."
            )

    def _check_variance_and_eot(self):
        """VMI-FGSM needs an iterative attack."""
        if self.variance_samples > 0 and self.method != "pgd":
            raise WorkflowError(
                "variance_samples needs method: pgd (VMI-FGSM tunes each step with the "
                "previous step's variance; FGSM is one step)."
            )

    @property
    def runs(self) -> int:
        """Restarts actually run: without random start, DI or VMI every restart is the same
        deterministic run, done once."""
        random = self.random_start or self.diversity_prob > 0 or self.variance_samples > 0
        return int(self.restarts) if random else 1

    @property
    def gradients_per_step(self) -> int:
        """Loss gradients per step and image: scales * (1 + variance_samples), each of them
        the mean of ``eot_samples`` evaluations (see ``cost_per_step``)."""
        return int(self.scales) * (1 + int(self.variance_samples))

    @property
    def cost_per_step(self) -> int:
        """Forward+backward passes per step and image."""
        return self.gradients_per_step * int(self.eot_samples)

    @property
    def iterations(self) -> int:
        return 1 if self.method == "fgsm" else int(self.steps)

    @property
    def step_size(self) -> float:
        """Step actually used, in the units of eps (FGSM: eps)."""
        return float(self.eps) if self.method == "fgsm" else float(self.step)

    @property
    def eps_unit(self) -> str:
        """Unit of eps and step: "1/255" (linf) or "L2, [0,1] pixels" (l2)."""
        return _unit(self.norm)

    @property
    def eps_float(self) -> float:
        """eps in [0, 1] pixel units (linf: eps / 255; l2: eps)."""
        return float(self.eps) / 255.0 if self.norm == "linf" else float(self.eps)

    @property
    def step_float(self) -> float:
        """Step actually used, in [0, 1] pixel units."""
        return self.step_size / 255.0 if self.norm == "linf" else self.step_size

    def attrs(self) -> dict:
        """Plain python scalars for HDF5 attributes (step/steps as actually used)."""
        return {
            "method": str(self.method),
            "norm": str(self.norm),
            "eps": float(self.eps),
            "eps_unit": self.eps_unit,  # also the unit of step
            "step": self.step_size,
            "steps": self.iterations,
            "targeted": bool(self.targeted),
            "random_start": bool(self.random_start),
            "restarts": int(self.restarts),
            "momentum": float(self.momentum),
            "diversity_prob": float(self.diversity_prob),
            "diversity_scale": float(self.diversity_scale),
            "seed": int(self.seed),
            "ti_kernel": int(self.ti_kernel),
            "scales": int(self.scales),
            "nesterov": bool(self.nesterov),
            "variance_samples": int(self.variance_samples),
            "variance_bound": float(self.variance_bound),
            "eot_samples": int(self.eot_samples),
        }

    def stream_seed(self, *keys) -> tuple[int, int]:
        """Seed of one random stream of this attack: ``stream_seed(seed, <config>, *keys)``.

        The configuration (every attribute, e.g. eps, but the seed and the number of restarts)
        is part of the key, so attacks differing in anything draw independent numbers, while
        restart r draws the same numbers whatever the number of restarts (more restarts never
        give a weaker example). The transfer settings added later (``ti_kernel``, ``scales``,
        ``nesterov``, ``variance_samples``, ``variance_bound``) are part of it only when on, so
        attacks without them keep the streams they had before.
        """
        cfg = {
            k: v
            for k, v in self.attrs().items()
            if k not in ("seed", "restarts") and not (k in _NEW_KEYS_OFF and _NEW_KEYS_OFF[k](self))
        }
        return stream_seed(self.seed, json.dumps(cfg, sort_keys=True), *keys)


def _plain(key):
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, str | bool | int | float):
        return key
    raise WorkflowError(f"Random stream keys must be str/int/float/bool, got {type(key)!r}.")


def stream_seed(attack_seed: int, *keys) -> tuple[int, int]:
    """Stateless RNG seed (two signed int64) for the stream named by ``(attack_seed, *keys)``.

    A pure function: sha256 of the JSON list ``[attack_seed, *keys]`` (keys: str/int/float/bool,
    e.g. source model, data task, shard, batch index). Different keys give independent Philox
    streams; the same keys give the same numbers on every run and machine.
    """
    payload = json.dumps([_plain(int(attack_seed)), *map(_plain, keys)], separators=(",", ":"))
    h = hashlib.sha256(payload.encode()).digest()
    return (
        int.from_bytes(h[:8], "little", signed=True),
        int.from_bytes(h[8:16], "little", signed=True),
    )


def spec_from_config(attack_cfg: dict, eps: float) -> AttackSpec:
    """Build an AttackSpec from one entry of the config's ``attacks:`` mapping and an eps
    (1/255 units for linf, L2 norm in [0, 1] pixel units for l2; see AttackSpec)."""
    cfg = dict(attack_cfg)
    if "method" not in cfg:
        raise WorkflowError("Attack setting 'method' is required (fgsm or pgd).")
    method = cfg.pop("method")
    if method not in METHODS:
        raise WorkflowError(f"Unknown attack method '{method}'; use one of {', '.join(METHODS)}.")
    check_keys(method, cfg)
    for key, value in cfg.items():
        check_value(key, value)
    eps = float(eps)
    if not eps > 0:
        unit = _unit(str(cfg.get("norm", _DEFAULT["norm"])))
        raise WorkflowError(f"Attack eps must be > 0 ({unit} units), got {eps}.")
    step = step_from_entry(cfg, eps, _DEFAULT["step_fraction"])
    if method == "fgsm":
        step, cfg["steps"] = eps, 1
    kwargs = {k: PARAMETERS[k].cast(v) for k, v in cfg.items()}
    return AttackSpec(method=str(method), eps=eps, step=step, **kwargs)


def step_from_entry(cfg: dict, eps: float, default_fraction: float) -> float:
    """The step an attack entry gives (``step``, or ``step_fraction`` x eps, popped from
    ``cfg``), in the units of eps."""
    if "step" in cfg and "step_fraction" in cfg:
        raise WorkflowError("Give either 'step' or 'step_fraction' for an attack, not both.")
    if "step" in cfg:
        step = float(cfg.pop("step"))
        check_value("step", step)
        return step
    frac = float(cfg.pop("step_fraction", default_fraction))
    check_value("step_fraction", frac)
    return frac * eps
