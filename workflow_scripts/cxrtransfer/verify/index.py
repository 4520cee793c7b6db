"""What depends on what in a results tree: the products made from a product, and the inputs
of a product that are gone.

:func:`children` follows the rules' DAG at the level of products: what the job of each
product reads comes from the rules' own input functions (:mod:`cxrtransfer.plan.inputs`),
asked with the facts of the tree (:class:`TreeFacts`: its shards, each model's metrics.json);
on top of that, the products one job writes together go together, and the final products
(tables, plots, report) are one block. :func:`downstream` is the transitive closure: what
``--remove`` deletes with a bad product.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from cxrtransfer.core import paths as P
from cxrtransfer.plan import inputs as plan_inputs
from cxrtransfer.plan.study import is_ensemble, is_view, view_parts
from cxrtransfer.verify.formats import Bad, read_metrics
from cxrtransfer.verify.products import FINAL_KINDS, SET_FIELDS, Product, product

_SET_DIR = P.pattern(P.ATTACK_DIR)


def model_sha256(results: Path, model: str) -> str | None:
    """The checkpoint hash recorded in ``models/{model}/metrics.json`` or None if unreadable."""
    try:
        return str(read_metrics(P.under(results, P.MODEL_DIR, model=model))["checkpoint_sha256"])
    except (Bad, OSError):
        return None


def model_task(results: Path, model: str) -> str | None:
    """A model's task: metrics.json's "task"; if unreadable, the one task of its clean
    predictions; else None (unknown)."""
    try:
        task = read_metrics(P.under(results, P.MODEL_DIR, model=model)).get("task")
        if task:
            return str(task)
    except (Bad, OSError):
        pass
    clean = P.under(results, P.PRED_CLEAN, target=model, data_task="*")
    tasks = sorted(f.stem for f in clean.parent.glob(clean.name)) if clean.parent.is_dir() else []
    return tasks[0] if len(tasks) == 1 else None


@dataclass
class Index:
    """Products of a tree looked up by (kind, field, value), and each model's task."""

    products: dict[str, list[Product]]
    model_tasks: dict[str, str | None]
    # a defended model -> the model inside it (metrics.json's base_model)
    model_bases: dict[str, str] = field(default_factory=dict)
    # a fine-tuned model -> the model it started from (metrics.json's init_from)
    model_inits: dict[str, str] = field(default_factory=dict)
    # an adversarially trained model -> its robust_base (metrics.json's robust_validation)
    model_robust_bases: dict[str, str] = field(default_factory=dict)
    by: dict[tuple[str, str, str], set[Product]] = field(default_factory=dict)
    # a product -> the products whose jobs read it (see readers_of)
    readers: dict[Product, set[Product]] = field(default_factory=dict)

    def __post_init__(self):
        by = defaultdict(set)
        for kind, prods in self.products.items():
            for p in prods:
                for k, v in p.fields:
                    by[(kind, k, v)].add(p)
        for model, task in self.model_tasks.items():
            for p in self.products["model"]:
                if p["model"] == model:
                    by[("model", "task", str(task))].add(p)
        self.by = dict(by)

    def select(self, kind: str, **fields: str) -> set[Product]:
        """Products of ``kind`` whose fields equal all of ``fields``."""
        if not fields:
            return set(self.products[kind])
        sets = [self.by.get((kind, k, v), set()) for k, v in fields.items()]
        return set.intersection(*sets)

    def test_shards(self, data_task: str) -> set[str]:
        """The test shards of a data task seen in the tree (shard labels)."""
        return {s["shard"] for s in self.select("shard", task=data_task, split="test")}


def build_index(results: Path, products: dict[str, list[Product]]) -> Index:
    """The index of a tree's products, with what each product's job reads."""
    tasks = {p["model"]: model_task(results, p["model"]) for p in products["model"]}
    bases, inits, robust_bases = {}, {}, {}
    for p in products["model"]:
        try:
            metrics = read_metrics(P.under(results, P.MODEL_DIR, model=p["model"]))
        except (Bad, OSError):
            continue
        if metrics.get("base_model"):
            bases[p["model"]] = str(metrics["base_model"])
        init = metrics.get("init_from")
        if isinstance(init, dict) and init.get("model"):
            inits[p["model"]] = str(init["model"])
        robust = metrics.get("robust_validation")
        base = robust.get("robust_base") if isinstance(robust, dict) else None
        if isinstance(base, dict) and base.get("via") == "robust_base" and base.get("model"):
            robust_bases[p["model"]] = str(base["model"])
    ix = Index(products, tasks, bases, inits, robust_bases)
    ix.readers = readers_of(results, ix)
    return ix


# ---------------------------------------------------------------------------------------------
# what each product's job reads: the rules' input functions, with the facts of the tree


@dataclass
class TreeFacts:
    """:class:`cxrtransfer.plan.inputs.Facts` of a results tree: the shards in it, each
    model's task, base model and start from its metrics.json; the targets of a data task are
    its models (an ensemble is never a target; a model of unknown task may be one of any)."""

    ix: Index
    noise_control: bool = True  # a set's control, where there is one, is its job's output

    def shard_ids(self, task: str, split: str) -> list[str]:
        return sorted(s["shard"] for s in self.ix.select("shard", task=task, split=split))

    def model_task(self, model: str) -> str | None:
        return self.ix.model_tasks.get(model)

    def source_task(self, name: str) -> str | None:
        return view_parts(name)[1] if is_view(name) else self.ix.model_tasks.get(name)

    def base_model(self, name: str) -> str:
        return self.ix.model_bases.get(name, name)

    def init_from(self, model: str) -> str | None:
        return self.ix.model_inits.get(model)

    def robust_base(self, model: str) -> str | None:
        return self.ix.model_robust_bases.get(model)

    def targets(self, data_task: str) -> list[str]:
        tasks = self.ix.model_tasks
        return sorted(m for m, t in tasks.items() if t in (data_task, None) and not is_ensemble(m))

    def is_universal(self, attack: str) -> bool:
        return bool(self.ix.select("uap", attack=attack))

    def uap_split(self, attack: str) -> str | None:
        """The crafting split recorded in the attack's perturbations (their spec's)."""
        for u in sorted(self.ix.select("uap", attack=attack)):
            try:
                with h5py.File(u.path, "r") as f:
                    return str(f.attrs["split"])
            except (OSError, KeyError):
                continue
        return None

    def expert_column(self, data_task: str) -> str | None:
        return None  # the expert labels are not a product verify checks


def job_inputs(p: Product, facts: TreeFacts) -> plan_inputs.Inputs:
    """The named inputs of the job that made ``p``, by the rule's own input function (a noise
    control's products are made by its attack's jobs)."""
    k, get = p.kind, p.get
    keys = (get("source"), get("data_task"), get("attack", "").removesuffix(P.CONTROL_SUFFIX))
    keys += (get("eps"),)
    if k == "shard":
        return plan_inputs.shard(facts, p["task"])
    if k == "shard_summary":
        return plan_inputs.shard_summary(facts, p["task"])
    if k == "model":
        return _model_inputs(p["model"], facts)
    if k == "uap":
        return plan_inputs.uap(facts, p["source"], p["attack"], p["eps"])
    if k == "attack":
        return plan_inputs.attack(facts, *keys)
    if k == "clean_prediction":
        return plan_inputs.predict_clean(facts, p["target"], p["data_task"])
    if k == "adv_prediction":
        return plan_inputs.predict_adv(facts, p["target"], *keys)
    if k == "set":
        return plan_inputs.evaluate(facts, *keys)
    if k == "checklist":
        return plan_inputs.checklist_runs(facts, p["target"])
    return {}  # a manifest (made from the download) or a final product (see children)


def _model_inputs(model: str, facts: TreeFacts) -> plan_inputs.Inputs:
    """A model's job: an ensemble's, a finding view's, a defended model's or a training."""
    if is_ensemble(model):
        return plan_inputs.ensemble(facts, model)
    if is_view(model):
        return plan_inputs.finding_view(facts, model)
    if model in facts.ix.model_bases:
        return plan_inputs.defend(facts, model)
    return plan_inputs.train(facts, model)


# the files of a model directory that jobs read (the model is one product, its directory)
MODEL_INPUT_FILES = tuple(Path(t).name for t in (P.MODEL, P.MODEL_METRICS, P.MODEL_PATIENTS))


def products_at(ix: Index) -> dict[Path, set[Product]]:
    """The products of an input path: the product itself, a model for any of its files, every
    cache of an adversarial set for its directory."""
    out: dict[Path, set[Product]] = defaultdict(set)
    for kind, prods in ix.products.items():
        for p in prods:
            out[p.path].add(p)
            if kind == "attack":
                out[p.path.parent].add(p)
            if kind == "model":
                for name in MODEL_INPUT_FILES:
                    out[p.path / name].add(p)
    return out


def readers_of(results: Path, ix: Index) -> dict[Product, set[Product]]:
    """Every product -> the products whose jobs read it (the rules' inputs of each product's
    job, asked with the tree's facts)."""
    facts = TreeFacts(ix)
    at = products_at(ix)
    readers: dict[Product, set[Product]] = defaultdict(set)
    for prods in ix.products.values():
        for c in prods:
            for f in plan_inputs.files(job_inputs(c, facts)):
                for p in at.get(P.under(results, f), ()):
                    if p != c:
                        readers[p].add(c)
    return dict(readers)


def children(p: Product, ix: Index) -> set[Product]:
    """Products made directly from ``p`` (their jobs read it) or by the same job as ``p``."""
    k, sel = p.kind, ix.select
    out = set(ix.readers.get(p, ()))
    if k in ("manifest", "shard_summary"):  # one job writes a task's manifests (summaries)
        out |= sel(k, task=p["task"])
    if k == "attack":  # one attack job writes every shard's cache of a set and of its control
        out |= sel("attack", **p.set_keys()) | twins(p, ix)
    if k == "adv_prediction":  # one predict_adv job writes a set's and its control's
        out |= twins(p, ix, target=p["target"])
    if k == "set":  # the final products are one block, remade from every set
        out |= set().union(*(sel(f) for f in FINAL_KINDS)) | twins(p, ix)
        # the comparisons of the deployed target of the set's data task read it
        task = p["data_task"]
        out |= {c for c in sel("comparison") if ix.model_tasks.get(c["target"]) in (task, None)}
    if k in ("comparison", "checklist"):  # the tables job reads every one
        out |= sel("table")
    if k == "table":  # the tables job writes all of tables/; every plot reads transfer.csv
        out |= sel("table") | sel("plot")
    return out


def twins(p: Product, ix: Index, **fields: str) -> set[Product]:
    """Products of the same kind made by the same job as ``p``: an attack set's noise control
    and the control's attack set (one attack job writes both), likewise their predictions (one
    predict_adv job) and metrics sets (one evaluate job)."""
    attack = p["attack"]
    other = (
        attack.removesuffix(P.CONTROL_SUFFIX)
        if attack.endswith(P.CONTROL_SUFFIX)
        else attack + P.CONTROL_SUFFIX
    )
    keys = {f: p[f] for f in SET_FIELDS if f != "attack"}
    return ix.select(p.kind, attack=other, **keys, **fields)


def downstream(p: Product, ix: Index) -> set[Product]:
    """``p`` and every product made from it, transitively."""
    seen = {p}
    todo = [p]
    while todo:
        for c in children(todo.pop(), ix):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


# ---------------------------------------------------------------------------------------------
# inputs that are gone


def attack_path(results: Path, keys: dict, shard: str) -> Path:
    return P.under(results, P.ATTACK, shard=shard, **keys)


def missing_set_inputs(p: Product, ix: Index, results: Path) -> list[Path]:
    """Inputs of a metrics set that no longer exist: the attack cache of every test shard seen
    for the data task (shards and this set's caches) and, for every target (model of the set's
    data task), its clean and adversarial predictions."""
    keys = p.set_keys()
    dt = keys["data_task"]
    shards = ix.test_shards(dt) | {a["shard"] for a in ix.select("attack", **keys)}
    # an ensemble is a source only, never a target
    targets = sorted(m for m, t in ix.model_tasks.items() if t == dt and not is_ensemble(m))
    need = [attack_path(results, keys, s) for s in sorted(shards)]
    for t in targets:
        need.append(P.under(results, P.PRED_CLEAN, target=t, data_task=dt))
        need.append(P.under(results, P.PRED_ADV, target=t, **keys))
    return [n for n in need if not n.is_file()]


def set_references(p: Product, ix: Index, results: Path) -> list[Path]:
    """The files a prediction file of a whole set was made from, in shard order: the data
    task's test shards (clean predictions) or the set's attack cache of each of them
    (adversarial ones); every test shard seen in the tree for the data task counts."""
    dt = p["data_task"]
    shards = ix.test_shards(dt)
    if p.kind == "clean_prediction":
        return [P.under(results, P.SHARD, task=dt, split="test", shard=s) for s in sorted(shards)]
    keys = p.set_keys()
    shards |= {a["shard"] for a in ix.select("attack", **keys)}
    return [attack_path(results, keys, s) for s in sorted(shards)]


def missing_sets(ix: Index, results: Path) -> list[Path]:
    """Metrics sets that the tables were made from (a set's attack caches or predictions
    exist) but that no longer exist."""
    keys = {
        tuple(x.set_keys().items())
        for kind in ("attack", "adv_prediction")
        for x in ix.products[kind]
    }
    paths = [P.under(results, P.SET_METRICS, **dict(k)) for k in keys]
    return sorted(p for p in paths if not p.is_file())


def missing(what: list[Path]) -> str:
    """The reason of a product whose inputs ``what`` are gone."""
    more = f" (and {len(what) - 1} more)" if len(what) > 1 else ""
    return f"its input {what[0]} is missing{more}; Snakemake would not rebuild it"


def incomplete_sets(results: Path, ix: Index) -> list[tuple[Product, str]]:
    """Adversarial-set directories that lack the cache of a test shard of their data task
    (e.g. a cache deleted by hand): Snakemake would not rerun the attack job while the
    directory exists. Each is reported as its first missing cache."""
    out = []
    every = P.under(results, P.ATTACK_DIR, **dict.fromkeys(SET_FIELDS, "*"))
    for d in sorted(results.glob(every.relative_to(results).as_posix())):
        m = _SET_DIR.match(d.relative_to(results).as_posix())
        if not m or not d.is_dir():
            continue
        keys = m.groupdict()
        shards = ix.test_shards(keys["data_task"])
        gone = sorted(s for s in shards if not attack_path(results, keys, s).is_file())
        if gone:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            p = product("attack", attack_path(results, keys, gone[0]), shard=gone[0], **keys)
            out.append((p, f"missing: the set has no cache of test shard {gone[0]}{more}"))
    return out
