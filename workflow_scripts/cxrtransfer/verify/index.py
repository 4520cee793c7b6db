"""What depends on what in a results tree: the products made from a product, and the inputs
of a product that are gone.

:func:`children` encodes the rules' DAG at the level of products (which job reads which
files); the names of ensembles and views come from :mod:`cxrtransfer.plan.study`, the paths
from :mod:`cxrtransfer.core.paths`. :func:`downstream` is the transitive closure: what
``--remove`` deletes with a bad product.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cxrtransfer.core import paths as P
from cxrtransfer.plan.study import ensemble_members, is_ensemble, view_parts
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
    by: dict[tuple[str, str, str], set[Product]] = field(default_factory=dict)

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
    tasks = {p["model"]: model_task(results, p["model"]) for p in products["model"]}
    bases = {}
    for p in products["model"]:
        try:
            base = read_metrics(P.under(results, P.MODEL_DIR, model=p["model"])).get("base_model")
        except (Bad, OSError):
            base = None
        if base:
            bases[p["model"]] = str(base)
    return Index(products, tasks, bases)


def _shard_children(p: Product, ix: Index) -> set[Product]:
    t, sel = p["task"], ix.select
    # the train rule reads all three splits (test metrics), so a rebuilt test shard also
    # retrains the task's models (Snakemake: input newer than output)
    out = sel("shard_summary", task=t) | sel("model", task=t)
    if p["split"] == "test":  # one attack job reads all test shards of its data task
        out |= sel("attack", data_task=t)
        out |= sel("clean_prediction", data_task=t)
    return out


def _model_children(p: Product, ix: Index) -> set[Product]:
    m, sel = p["model"], ix.select
    task = ix.model_tasks.get(m)
    out = sel("attack", source=m) | sel("clean_prediction", target=m) | sel("uap", source=m)
    # an ensemble source is made from its members' checkpoints
    out |= {e for e in sel("model") if m in ensemble_members(e["model"]) and e != p}
    # a defended model is made from the model inside it
    out |= {d for d in sel("model") if ix.model_bases.get(d["model"]) == m}
    # a finding view {model}@{task} is made from the multi-label model
    out |= {v for v in sel("model") if view_parts(v["model"])[0] == m and v != p}
    out |= sel("adv_prediction", target=m) | sel("adv_prediction", source=m)
    out |= sel("set", source=m)
    # targets of a set are all models of its data task (an ensemble is never a target);
    # unknown task: every set
    if not is_ensemble(m):
        out |= sel("set", data_task=task) if task else sel("set")
    return out


def children(p: Product, ix: Index) -> set[Product]:
    """Products made directly from ``p`` (or by the same job as ``p``)."""
    k, sel = p.kind, ix.select
    if k == "manifest":
        t = p["task"]
        return sel("manifest", task=t) | sel("shard", task=t) | sel("shard_summary", task=t)
    if k == "shard":
        return _shard_children(p, ix)
    if k == "shard_summary":
        return sel("shard_summary", task=p["task"])
    if k == "model":
        return _model_children(p, ix)
    if k == "uap":  # applied to any data task's test images by the attack jobs
        return sel("attack", source=p["source"], attack=p["attack"], eps=p["eps"])
    if k == "attack":
        keys = p.set_keys()
        out = sel("adv_prediction", **keys) | sel("set", **keys)
        # one attack job writes every shard's cache of a set and of its control
        return out | sel("attack", **keys) | twins(p, ix)
    if k == "clean_prediction":
        return sel("set", data_task=p["data_task"])
    if k == "adv_prediction":
        return sel("set", **p.set_keys()) | twins(p, ix, target=p["target"])
    if k == "set":
        return set().union(*(sel(f) for f in FINAL_KINDS)) | twins(p, ix)
    if k == "table":  # the tables job writes all of tables/; every plot reads transfer.csv
        return sel("table") | sel("plot")
    return set()  # a plot or the report config: nothing is made from it


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
