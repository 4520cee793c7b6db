"""cxrtransfer.verify on small but complete results trees of real HDF5/CSV/JSON files."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from cxrtransfer.config import runconfig
from cxrtransfer.data.ingest import PNG_SIGNATURE
from cxrtransfer.evaluate.checklist_io import RUN_COLUMNS
from cxrtransfer.verify import command, formats
from cxrtransfer.verify.index import build_index, downstream, model_sha256
from cxrtransfer.verify.products import FINAL_KINDS, list_products

N, SIZE = 4, 8
TASKS = {"ptx": ["ptx_a", "ptx_b"], "card": ["card_a"]}
MODEL_TASK = {m: t for t, ms in TASKS.items() for m in ms}
# (source, data_task, attack, eps, norm): L-inf eps in 1/255, L2 eps in [0, 1] pixel units
ATTACKS = [
    ("ptx_a", "ptx", "pgd", "8", "linf"),
    ("ptx_a", "ptx", "pgd__shuffled", "8", "linf"),
    ("ptx_a", "ptx", "pgdl2", "0.5", "l2"),
    ("card_a", "ptx", "pgd", "8", "linf"),
]
TEST_SHARDS = ("000", "001")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ids(task, shard):
    return np.array([f"{task}{shard}_{i:03d}.png" for i in range(N)])


def write_shard(path: Path, task, split, shard, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(20, 236, (N, SIZE, SIZE), dtype=np.uint8))
        f.create_dataset("labels", data=np.array([0, 1] * (N // 2), np.int8))
        f.create_dataset("image_index", data=ids(task, shard).astype("S"))
        f.create_dataset("patient_id", data=np.arange(N, dtype=np.int32))
        f.create_dataset("rejected_image_index", data=np.array([], dtype="S1"))
        f.create_dataset("rejected_reason", data=np.array([], dtype="S1"))
        f.attrs.update({"task": task, "split": split, "image_size": SIZE, "shard": int(shard)})


def adversarial(clean: np.ndarray, norm: str, eps: float, rng) -> np.ndarray:
    """Images exactly within eps of ``clean`` (L-inf at the bound, L2 at 90% of it)."""
    if norm == "linf":
        d = rng.choice([-int(eps), int(eps)], clean.shape)
    else:
        d = rng.normal(size=clean.shape)
        norms = np.sqrt((d**2).reshape(len(d), -1).sum(1)).reshape(-1, 1, 1)
        d = np.trunc(d / norms * 0.9 * eps * 255)  # truncation only shrinks the norm
    return np.clip(clean.astype(np.int16) + d, 0, 255).astype(np.uint8)


def write_attack(path: Path, results: Path, source, data_task, eps, norm, shard, source_sha):
    clean_rel = f"{results.name}/shards/{data_task}/test/{shard}.h5"
    with h5py.File(results / "shards" / data_task / "test" / f"{shard}.h5", "r") as f:
        clean = f["images"][...]
        labels = f["labels"][...]
    adv = adversarial(clean, norm, float(eps), np.random.default_rng(7))
    path.parent.mkdir(parents=True, exist_ok=True)
    d = (adv.astype(np.float64) - clean) / 255
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=adv)
        f.create_dataset("image_index", data=ids(data_task, shard).astype("S"))
        f.create_dataset("labels", data=labels)
        f.create_dataset("patient_id", data=np.arange(N, dtype=np.int32))
        f.create_dataset("source_clean_prob", data=np.full(N, 0.8, np.float32))
        f.create_dataset("source_adv_prob", data=np.full(N, 0.2, np.float32))
        f.create_dataset("l2", data=np.sqrt((d**2).reshape(N, -1).sum(1)).astype(np.float32))
        f.create_dataset("linf", data=np.abs(d).reshape(N, -1).max(1).astype(np.float32))
        f.attrs.update(
            {
                "eps": float(eps),
                "norm": norm,
                "source_checkpoint_sha256": source_sha,
                "clean_shard": clean_rel,
                "source_model": source,
            }
        )


def write_csv(path: Path, df: pd.DataFrame):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def predictions(task, shard, target_sha, source_sha=None):
    df = pd.DataFrame(
        {
            "image_index": ids(task, shard),
            "patient_id": np.arange(N),
            "label": [0, 1] * (N // 2),
            "prob": np.linspace(0.1, 0.9, N).round(6),
        }
    )
    if source_sha is not None:
        df["source_clean_prob"] = 0.8
        df["source_adv_prob"] = 0.2
        df["l2"] = 0.1
        df["linf"] = 8 / 255
    df["checkpoint_sha256"] = target_sha
    for field, value in runconfig.job_record().items():  # as a planned job records it
        df[field] = value
    if source_sha is not None:
        df["source_checkpoint_sha256"] = source_sha
    return df


def set_predictions(task, target_sha, source_sha=None):
    """A prediction file of a whole set: the rows of every test shard in shard order."""
    parts = [predictions(task, s, target_sha, source_sha) for s in TEST_SHARDS]
    return pd.concat(parts, ignore_index=True)


def make_tree(base: Path) -> Path:
    """A complete results tree (2 tasks, 3 models, 4 attack sets on 2 test shards), plus a
    dataset outside it; returns the results directory."""
    results = base / "results"
    data = base / "data"
    data.mkdir(parents=True)
    (data / "image.png").write_bytes(PNG_SIGNATURE + b"user data")
    (data / ".tmp-999999-user.h5").write_bytes(b"not ours")
    for task in TASKS:
        man = pd.DataFrame(
            {
                "image_index": ids(task, "000"),
                "patient_id": range(N),
                "label": [0, 1] * (N // 2),
                "split": ["train", "val", "test", "test"],
                "path": [str(data / "image.png")] * N,
                "finding_labels": ["No Finding", "X"] * (N // 2),
                "file_bytes": [17] * N,
                "file_mtime_ns": [1] * N,
            }
        )
        write_csv(results / "manifests" / f"{task}.csv", man)
        write_csv(results / "manifests" / f"{task}.rejected.csv", man.iloc[:0])
        write_csv(results / "manifests" / f"{task}.summary.csv", pd.DataFrame({"split": ["x"]}))
        seed = 0
        for split, shards in (("train", ["000"]), ("val", ["000"]), ("test", TEST_SHARDS)):
            for s in shards:
                seed += 1
                write_shard(results / "shards" / task / split / f"{s}.h5", task, split, s, seed)
        write_csv(results / "shards" / task / "summary.csv", pd.DataFrame({"split": ["train"]}))
        write_csv(results / "shards" / task / "rejected.csv", pd.DataFrame({"image_index": []}))
    shas = {}
    for i, (model, task) in enumerate(MODEL_TASK.items()):
        d = results / "models" / model
        d.mkdir(parents=True)
        (d / "model.keras").write_bytes(bytes([i]) * 100)
        shas[model] = sha(d / "model.keras")
        (d / "metrics.json").write_text(
            json.dumps({"task": task, "checkpoint_sha256": shas[model]})
        )
        write_csv(d / "history.csv", pd.DataFrame({"epoch": [0, 1], "val_auc": [0.6, 0.7]}))
        (d / "train_patients.txt").write_text("1\n2\n")
        (d / "work" / "backup").mkdir(parents=True)
        (d / "work" / "backup" / "state").write_bytes(b"resume")
        write_csv(
            results / "predictions" / model / "clean" / f"{task}.csv",
            set_predictions(task, shas[model]),
        )
    for source, dt, attack, eps, norm in ATTACKS:
        for s in TEST_SHARDS:
            write_attack(
                results / "attacks" / source / dt / attack / f"eps{eps}" / f"{s}.h5",
                results,
                source,
                dt,
                eps,
                norm,
                s,
                shas[source],
            )
        for target in TASKS[dt]:
            write_csv(
                results / "predictions" / target / "adv" / source / dt / attack / f"eps{eps}.csv",
                set_predictions(dt, shas[target], shas[source]),
            )
        cells = [{"source": source, "target": t, "data_task": dt} for t in TASKS[dt]]
        p = results / "metrics" / "sets" / source / dt / attack / f"eps{eps}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(cells))
    write_csv(results / "tables" / "transfer.csv", pd.DataFrame({"source": ["ptx_a"]}))
    (results / "tables" / "summary.md").write_text("# Summary\n")
    write_csv(results / "tables" / "matrices" / "ptx_pgd.csv", pd.DataFrame({"a": [1]}))
    (results / "tables" / "matrices" / "ptx_pgd.md").write_text("| a |\n")
    for rel in ("heatmap/ptx_pgd.png", "roc/ptx_a/ptx/pgd/eps8/ptx_a.png"):
        (results / "plots" / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / "plots" / rel).write_bytes(PNG_SIGNATURE + b"image")
    (results / "plots" / "heatmap" / "ptx_pgd.pdf").write_bytes(b"%PDF-1.4 figure")
    comparison = results / "metrics" / "comparisons" / "ptx_a.csv"
    comparison.parent.mkdir(parents=True)
    write_csv(comparison, pd.DataFrame({"a": ["pgd"], "difference": [0.1]}))
    write_csv(results / CARD_COMPARISON, pd.DataFrame({"a": ["pgd"], "difference": [0.2]}))
    (results / "report").mkdir()
    (results / "report" / "config.yaml").write_text("eps: [8]\n")
    for rel in ("logs/x.log", "benchmarks/x.tsv", "synthetic/nih/x.png"):
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_text("")
    return results


def files(base: Path) -> set[str]:
    """Every file under ``base``, relative to it."""
    return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}


PGD_AND_CONTROL = ("pgd", "pgd__shuffled")
# a deployed target's paired comparisons: read from its sets, read by the tables job
COMPARISON = "results/metrics/comparisons/ptx_a.csv"
# the Cardiomegaly target's: no set of this tree is of its data task
CARD_COMPARISON = "metrics/comparisons/card_a.csv"
TABLES = {
    "results/tables/transfer.csv",
    "results/tables/summary.md",
    "results/tables/matrices/ptx_pgd.csv",
    "results/tables/matrices/ptx_pgd.md",
}
FINALS = {
    COMPARISON,
    "results/plots/heatmap/ptx_pgd.pdf",
    "results/tables/transfer.csv",
    "results/tables/summary.md",
    "results/tables/matrices/ptx_pgd.csv",
    "results/tables/matrices/ptx_pgd.md",
    "results/plots/heatmap/ptx_pgd.png",
    "results/plots/roc/ptx_a/ptx/pgd/eps8/ptx_a.png",
    "results/report/config.yaml",
}


def model_files(model):
    return {
        f"results/models/{model}/{n}"
        for n in ("model.keras", "metrics.json", "history.csv", "train_patients.txt")
    } | {f"results/models/{model}/work/backup/state"}


def run(results, *args, capsys=None):
    code = command.main(["--results", str(results), *args])
    out = capsys.readouterr().out if capsys else ""
    return code, out


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def test_clean_tree_passes(tree, capsys):
    before = files(tree.parent)
    code, out = run(tree, capsys=capsys)
    assert code == 0, out
    assert "BAD" not in out and "DEAD-TMP" not in out
    assert out.strip().splitlines()[-1].startswith("0 bad file(s), 0 dead temporary file(s)")
    code, out = run(tree, "--remove", capsys=capsys)
    assert code == 0 and files(tree.parent) == before


def test_library_imports_without_tensorflow(root):
    env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts")}
    code = "import sys, cxrtransfer.verify.command; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_cli_module(tree, root):
    env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts")}
    (tree / "plots" / "heatmap" / "ptx_pgd.png").write_bytes(b"GIF89a")
    r = subprocess.run(
        [sys.executable, "-m", "cxrtransfer.verify", "--results", "results"],
        cwd=tree.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "BAD results/plots/heatmap/ptx_pgd.png: not a PNG file" in r.stdout
    assert "1 bad file(s), 0 dead temporary file(s)" in r.stdout


def truncate(path: Path, n: int):
    data = path.read_bytes()
    path.write_bytes(data[:-n])


def rewrite_csv(path: Path, change):
    df = pd.read_csv(path, dtype={"image_index": str})
    change(df).to_csv(path, index=False)


def set_attr(path: Path, **attrs):
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)


def push_over_eps(path: Path):
    """Move every pixel of the first image at least 119/255 away from its clean value (clean
    pixels are in [20, 236])."""
    with h5py.File(path, "a") as f:
        img = f["images"][...]
        img[0] = np.where(img[0] >= 128, 0, 255)
        f["images"][...] = img


ADV = "predictions/ptx_b/adv/ptx_a/ptx/pgd/eps8.csv"
CLEAN = "predictions/ptx_a/clean/ptx.csv"
DAMAGES = {
    "truncated shard": (
        "shards/card/test/001.h5",
        lambda p: truncate(p, 200),
        "cannot be read",
    ),
    "linf eps exceeded": (
        "attacks/ptx_a/ptx/pgd/eps8/001.h5",
        push_over_eps,
        "L-inf perturbation",
    ),
    "l2 eps exceeded": (
        "attacks/ptx_a/ptx/pgdl2/eps0.5/000.h5",
        push_over_eps,
        "L2 perturbation",
    ),
    "stale attack cache": (
        "attacks/card_a/ptx/pgd/eps8/000.h5",
        lambda p: set_attr(p, source_checkpoint_sha256="0" * 64),
        "made with source checkpoint 000000000000",
    ),
    "attack cache of other images": (
        "attacks/card_a/ptx/pgd/eps8/000.h5",
        lambda p: set_attr(p, clean_shard="results/shards/ptx/test/001.h5"),
        "image_index differs from its clean shard",
    ),
    "prediction cut by 6 bytes": (ADV, lambda p: truncate(p, 6), "truncated"),
    "prediction missing a row": (
        CLEAN,
        lambda p: rewrite_csv(p, lambda df: df.iloc[:-1]),
        "7 rows but",
    ),
    "prediction with a probability out of range": (
        CLEAN,
        lambda p: rewrite_csv(p, lambda df: df.assign(prob=[0.1, 0.2, 1.5, "nan"] * 2)),
        "not a probability",
    ),
    "stale prediction": (
        ADV,
        lambda p: rewrite_csv(p, lambda df: df.assign(checkpoint_sha256="f" * 64)),
        "checkpoint_sha256 ffffffffffff… is not the current target checkpoint",
    ),
    "prediction from a stale source": (
        ADV,
        lambda p: rewrite_csv(p, lambda df: df.assign(source_checkpoint_sha256="e" * 64)),
        "is not the current source checkpoint",
    ),
    "replaced checkpoint": (
        "models/ptx_b/model.keras",
        lambda p: p.write_bytes(b"another checkpoint"),
        "model.keras: its SHA-256 is",
    ),
    "unreadable metrics.json": (
        "models/ptx_b/metrics.json",
        lambda p: truncate(p, 3),
        "metrics.json does not parse",
    ),
    "empty set": ("metrics/sets/ptx_a/ptx/pgd/eps8.json", lambda p: p.write_text("[]"), "empty"),
    "truncated table": ("tables/transfer.csv", lambda p: truncate(p, 1), "truncated"),
    "broken plot": ("plots/heatmap/ptx_pgd.png", lambda p: p.write_bytes(b"GIF"), "not a PNG"),
    "truncated manifest": ("manifests/ptx.csv", lambda p: truncate(p, 2), "truncated"),
    "broken pdf": ("plots/heatmap/ptx_pgd.pdf", lambda p: p.write_bytes(b"PNG"), "not a PDF"),
    "truncated comparison": (
        "metrics/comparisons/ptx_a.csv",
        lambda p: truncate(p, 1),
        "truncated",
    ),
}


@pytest.mark.parametrize("kind", DAMAGES)
def test_damage_is_detected(tree, capsys, kind):
    rel, damage, reason = DAMAGES[kind]
    damage(tree / rel)
    before = files(tree.parent)
    code, out = run(tree, capsys=capsys)
    assert code == 1
    bad = [line for line in out.splitlines() if line.startswith("BAD ")]
    # a model is one product (its directory); the reason names the file
    product = tree / rel if not rel.startswith("models/") else (tree / rel).parent
    assert len(bad) == 1 and bad[0].startswith(f"BAD {product}: "), out
    assert reason in bad[0] and Path(rel).name in bad[0], bad[0]
    assert out.splitlines()[-1].startswith("1 bad file(s), 0 dead temporary file(s)")
    assert files(tree.parent) == before  # without --remove nothing changes


def removed_by(tree, rel, damage):
    damage(tree / rel)
    before = files(tree.parent)
    assert command.main(["--results", str(tree), "--remove"]) == 1
    after = files(tree.parent)
    assert after <= before
    assert command.main(["--results", str(tree)]) == 0  # what is left is consistent
    return before - after


def whole_pgd_set():
    """Everything one attack job, its predict_adv jobs and its evaluate job wrote for the set
    ptx_a/ptx/pgd/eps8: every shard's cache and control, both targets' predictions of both, and
    both metrics sets."""
    p = "results/predictions"
    return {
        *(
            f"results/attacks/ptx_a/ptx/{a}/eps8/{s}.h5"
            for a in PGD_AND_CONTROL
            for s in TEST_SHARDS
        ),
        *(f"{p}/{t}/adv/ptx_a/ptx/{a}/eps8.csv" for t in TASKS["ptx"] for a in PGD_AND_CONTROL),
        *(f"results/metrics/sets/ptx_a/ptx/{a}/eps8.json" for a in PGD_AND_CONTROL),
    }


def test_remove_attack_cache_and_downstream(tree):
    """One attack job writes all shards of a set and their controls: a bad cache of one shard
    takes the whole set with it (Snakemake reruns that job), and everything made from it."""
    gone = removed_by(tree, *DAMAGES["linf eps exceeded"][:2])
    assert gone == {*whole_pgd_set(), *FINALS}


def test_remove_shuffled_control_takes_its_attack_job(tree):
    rel = "attacks/ptx_a/ptx/pgd__shuffled/eps8/000.h5"
    gone = removed_by(tree, rel, lambda p: truncate(p, 100))
    assert gone == {*whole_pgd_set(), *FINALS}


def test_cache_deleted_by_hand_takes_its_set_directory(tree, capsys):
    """A set directory lacking a shard's cache is reported; --remove deletes the whole set's
    directories (while one exists, Snakemake would not rerun the attack job) and downstream."""
    (tree / "attacks/ptx_a/ptx/pgd/eps8/000.h5").unlink()
    (tree / "attacks/ptx_a/ptx/pgd/eps8/.snakemake_timestamp").write_text("")
    code, out = run(tree, capsys=capsys)
    assert code == 1
    assert f"BAD {tree}/attacks/ptx_a/ptx/pgd/eps8/000.h5: missing: the set has no cache" in out
    before = files(tree.parent)
    assert run(tree, "--remove", capsys=capsys)[0] == 1
    assert not (tree / "attacks/ptx_a/ptx/pgd/eps8").exists()
    assert not (tree / "attacks/ptx_a/ptx/pgd__shuffled/eps8").exists()
    gone = before - files(tree.parent)
    assert gone == (
        whole_pgd_set() | FINALS | {"results/attacks/ptx_a/ptx/pgd/eps8/.snakemake_timestamp"}
    ) - {"results/attacks/ptx_a/ptx/pgd/eps8/000.h5"}
    assert run(tree, capsys=capsys)[0] == 0


def test_remove_prediction(tree):
    """One predict_adv job writes a target's predictions of a set and of its control, and one
    evaluate job both sets: all four go."""
    gone = removed_by(tree, *DAMAGES["prediction cut by 6 bytes"][:2])
    assert gone == {
        f"results/{ADV}",
        "results/predictions/ptx_b/adv/ptx_a/ptx/pgd__shuffled/eps8.csv",
        *(f"results/metrics/sets/ptx_a/ptx/{a}/eps8.json" for a in PGD_AND_CONTROL),
        *FINALS,
    }


def test_remove_clean_prediction_removes_every_set_of_its_task(tree):
    gone = removed_by(tree, *DAMAGES["prediction missing a row"][:2])
    sets = {f"results/metrics/sets/{s}/{d}/{a}/eps{e}.json" for s, d, a, e, _ in ATTACKS}
    assert gone == {f"results/{CLEAN}", *sets, *FINALS}


def card_a_removal():
    """What removing the model card_a takes with it."""
    p = "results/predictions"
    return {
        *model_files("card_a"),
        *(f"results/attacks/card_a/ptx/pgd/eps8/{s}.h5" for s in TEST_SHARDS),
        f"{p}/card_a/clean/card.csv",
        *(f"{p}/{t}/adv/card_a/ptx/pgd/eps8.csv" for t in TASKS["ptx"]),
        "results/metrics/sets/card_a/ptx/pgd/eps8.json",
        *FINALS,
    }


def test_remove_model(tree):
    gone = removed_by(tree, "models/card_a/model.keras", lambda p: p.write_bytes(b"x"))
    assert gone == card_a_removal()


def test_remove_target_model_removes_sets_of_its_task(tree):
    gone = removed_by(tree, *DAMAGES["unreadable metrics.json"][:2])
    p = "results/predictions"
    adv = {f"{p}/ptx_b/adv/{s}/{d}/{a}/eps{e}.csv" for s, d, a, e, _ in ATTACKS}
    sets = {f"results/metrics/sets/{s}/{d}/{a}/eps{e}.json" for s, d, a, e, _ in ATTACKS}
    clean = {f"{p}/ptx_b/clean/ptx.csv"}
    assert gone == {*model_files("ptx_b"), *adv, *clean, *sets, *FINALS}


def test_remove_train_shard_removes_the_task_models(tree):
    rel = "shards/card/train/000.h5"
    gone = removed_by(tree, rel, lambda p: truncate(p, 300))
    assert gone == {
        f"results/{rel}",
        "results/shards/card/summary.csv",
        "results/shards/card/rejected.csv",
        *card_a_removal(),
    }


def test_remove_test_shard(tree):
    """A test shard feeds attacks and clean predictions, and training (test metrics): a rebuilt
    test shard makes Snakemake retrain the task's models, so they go too."""
    rel = "shards/card/test/000.h5"
    gone = removed_by(tree, rel, lambda p: truncate(p, 300))
    assert gone == {
        f"results/{rel}",
        "results/shards/card/summary.csv",
        "results/shards/card/rejected.csv",
        *card_a_removal(),
    }


def test_remove_manifest_removes_the_task(tree):
    gone = removed_by(tree, "manifests/card.csv", lambda p: truncate(p, 2))
    shards = {
        f"results/shards/card/{split}/{s}.h5"
        for split, ss in (("train", ["000"]), ("val", ["000"]), ("test", TEST_SHARDS))
        for s in ss
    }
    assert gone == {
        *(f"results/manifests/card{x}.csv" for x in ("", ".rejected", ".summary")),
        *shards,
        "results/shards/card/summary.csv",
        "results/shards/card/rejected.csv",
        *card_a_removal(),
    }


def test_remove_final_files(tree):
    gone = removed_by(tree, *DAMAGES["broken plot"][:2])
    assert gone == {"results/plots/heatmap/ptx_pgd.png"}
    gone = removed_by(tree, *DAMAGES["broken pdf"][:2])
    assert gone == {"results/plots/heatmap/ptx_pgd.pdf"}
    gone = removed_by(tree, *DAMAGES["truncated table"][:2])
    assert gone == FINALS - {
        "results/plots/heatmap/ptx_pgd.png",
        "results/plots/heatmap/ptx_pgd.pdf",
        "results/report/config.yaml",
        COMPARISON,  # an input of the tables job, not its output
    }


def test_a_bad_comparison_takes_the_tables_made_from_it(tree):
    gone = removed_by(tree, *DAMAGES["truncated comparison"][:2])
    assert gone == FINALS - {"results/report/config.yaml"}


def test_missing_input_makes_its_consumers_bad(tree, capsys):
    """The README's old advice: a deleted attack cache whose predictions still exist."""
    (tree / "attacks/ptx_a/ptx/pgd/eps8/000.h5").unlink()
    code, out = run(tree, capsys=capsys)
    assert code == 1
    for t in TASKS["ptx"]:
        line = f"BAD {tree}/predictions/{t}/adv/ptx_a/ptx/pgd/eps8.csv: its input"
        assert any(s.startswith(line) and "is missing" in s for s in out.splitlines()), out


def test_dead_temporary_files(tree, capsys):
    if command.pid_running(999999):
        pytest.skip("pid 999999 is running")
    dead = tree / "attacks/ptx_a/ptx/pgd/eps8/.tmp-999999-x.h5"
    dead.write_bytes(b"partial")
    deep = tree / "models/ptx_a/work/.tmp-999999-y.csv"
    deep.write_bytes(b"partial")
    mine = tree / "attacks/ptx_a/ptx/pgd/eps8" / f".tmp-{os.getpid()}-x.h5"
    mine.write_bytes(b"in progress")
    in_synthetic = tree / "synthetic/nih/.tmp-999999-z.png"
    in_synthetic.write_bytes(b"left alone")
    code, out = run(tree, capsys=capsys)
    assert code == 1
    assert f"DEAD-TMP {dead}: temporary file of process 999999" in out
    assert f"DEAD-TMP {deep}:" in out
    assert str(mine) not in out and str(in_synthetic) not in out
    assert out.splitlines()[-1].startswith("0 bad file(s), 2 dead temporary file(s)")
    before = files(tree.parent)
    code, out = run(tree, "--remove", capsys=capsys)
    assert code == 1
    rel = {str(p.relative_to(tree.parent)) for p in (dead, deep)}
    assert before - files(tree.parent) == rel
    assert mine.exists() and in_synthetic.exists()
    assert run(tree, capsys=capsys)[0] == 0


def test_nothing_outside_results_is_touched(tree, tmp_path):
    data = tmp_path / "data"
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG_SIGNATURE)
    # a plot that is a symlink to a file outside: the link goes, the file stays
    link = tree / "plots" / "linked.png"
    link.symlink_to(outside)
    before_data = files(data)
    gone = removed_by(tree, *DAMAGES["stale attack cache"][:2])
    assert not link.exists() and not link.is_symlink()
    assert outside.read_bytes() == PNG_SIGNATURE
    assert files(data) == before_data
    assert all(g.startswith("results/") for g in gone)
    assert not any(
        g.startswith(("results/logs", "results/benchmarks", "results/synthetic")) for g in gone
    )


def test_remove_path_refuses_outside(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    for p in (victim, results / ".." / "victim.txt", results):
        with pytest.raises(ValueError):
            command.remove_path(p, results)
    assert victim.exists() and results.exists()


def test_units(tree):
    assert (
        formats.resolve_clean_shard("results/shards/t/test/000.h5", tree)
        == tree / "shards/t/test/000.h5"
    )
    assert formats.resolve_clean_shard("other/x.h5", tree) == tree.parent / "other/x.h5"
    clean = np.zeros((1, 2, 2), np.uint8)
    assert formats.eps_violation(clean + 2, clean, "linf", 2.0) is None
    assert "exceeds" in formats.eps_violation(clean + 3, clean, "linf", 2.999)
    # L2 in [0, 1] pixel units: four pixels of 255 -> norm 2
    assert formats.eps_violation(clean + 255, clean, "l2", 2.0) is None
    assert "exceeds" in formats.eps_violation(clean + 255, clean, "l2", 1.99)
    products = list_products(tree)
    assert {k: len(v) for k, v in products.items()} == {
        "manifest": 6,
        "shard": 8,
        "shard_summary": 4,
        "model": 3,
        "uap": 0,
        "attack": 8,
        "clean_prediction": 3,
        "adv_prediction": 8,
        "set": 4,
        "comparison": 2,
        "checklist": 0,
        "table": 3,
        "plot": 3,
        "report": 1,
    }
    ix = build_index(tree, products)
    assert ix.model_tasks == MODEL_TASK
    (set_,) = ix.select("set", source="card_a")
    finals = {p for k in (*FINAL_KINDS, "comparison") for p in products[k]}
    card = {p for p in products["comparison"] if p["target"] == "card_a"}
    assert card and downstream(set_, ix) == {set_} | (finals - card)


def test_deleted_prediction_makes_its_sets_stale(tree, capsys):
    """The README's old advice on a prediction: its sets exist, so Snakemake would not rebuild
    it; verify reports the sets and --remove takes them (and the finals) away."""
    (tree / CLEAN).unlink()
    code, out = run(tree, capsys=capsys)
    assert code == 1
    sets = {f"metrics/sets/{s}/{d}/{a}/eps{e}.json" for s, d, a, e, _ in ATTACKS}
    bad = {line.split(":")[0] for line in out.splitlines() if line.startswith("BAD ")}
    # the control's set is made by the same evaluate job as its attack's: counted with it
    control = "metrics/sets/ptx_a/ptx/pgd__shuffled/eps8.json"
    assert bad == {f"BAD {tree / s}" for s in sets - {control}}
    assert f"its input {tree / CLEAN} is missing" in out
    before = files(tree.parent)
    assert run(tree, "--remove", capsys=capsys)[0] == 1
    assert before - files(tree.parent) == {f"results/{s}" for s in sets} | FINALS
    assert run(tree, capsys=capsys)[0] == 0


def test_deleted_set_makes_the_tables_stale(tree, capsys):
    rel = "metrics/sets/ptx_a/ptx/pgdl2/eps0.5.json"
    (tree / rel).unlink()
    code, out = run(tree, capsys=capsys)
    assert code == 1
    assert f"BAD {tree}/tables/transfer.csv: its input {tree / rel} is missing" in out
    before = files(tree.parent)
    run(tree, "--remove", capsys=capsys)
    assert before - files(tree.parent) == FINALS - {"results/report/config.yaml", COMPARISON}


def test_model_of_unknown_task_takes_every_set(tree):
    """metrics.json unreadable and no clean predictions to tell the task: every set may have
    it as a target, so every set goes."""
    shutil.rmtree(tree / "predictions/card_a/clean")
    gone = removed_by(tree, "models/card_a/metrics.json", lambda p: p.write_text("{"))
    p = "results/predictions"
    assert gone == {
        *model_files("card_a"),
        *(f"results/attacks/card_a/ptx/pgd/eps8/{s}.h5" for s in TEST_SHARDS),
        *(f"{p}/{t}/adv/card_a/ptx/pgd/eps8.csv" for t in TASKS["ptx"]),
        *(f"results/metrics/sets/{s}/{d}/{a}/eps{e}.json" for s, d, a, e, _ in ATTACKS),
        *FINALS,
        f"results/{CARD_COMPARISON}",  # its target's task is unknown now: it may read any set
    }


def test_interrupted_training_is_not_a_product(tree, capsys):
    """A model directory holding only the resume state of a killed training is left alone."""
    (tree / "models/new_model/work/backup").mkdir(parents=True)
    (tree / "models/new_model/work/backup/state").write_bytes(b"epoch 3")
    assert run(tree, "--remove", capsys=capsys)[0] == 0
    assert (tree / "models/new_model/work/backup/state").exists()


def test_missing_results_dir(tmp_path, capsys):
    assert command.main(["--results", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_universal_perturbation_is_checked(tmp_path):
    """A UAP file is readable, within its budget and made from the current checkpoint."""
    from cxrtransfer.attacks.uap import write_uap

    path = tmp_path / "eps8.h5"
    write_uap(
        path, np.full((4, 4), 8, np.int16), {"eps": 8.0, "source_checkpoint_sha256": "a" * 64}
    )
    assert formats.check_uap(path, "a" * 64) is None
    assert "another checkpoint" in formats.check_uap(path, "b" * 64)
    write_uap(
        path, np.full((4, 4), 9, np.int16), {"eps": 8.0, "source_checkpoint_sha256": "a" * 64}
    )
    assert "damaged" in formats.check_uap(path, "a" * 64)
    path.write_bytes(b"not hdf5")
    assert "Cannot read" in formats.check_uap(path, "a" * 64)


def test_a_checklist_run_of_another_checkpoint_is_bad_and_takes_the_tables(tree, capsys):
    """A target's checklist runs are a product: checked for their columns, their job's config
    record and the checkpoint they attacked; a bad one goes with the tables made from it."""
    sha = model_sha256(tree, "ptx_a")
    path = tree / "checklist" / "ptx_a.csv"
    path.parent.mkdir()
    row = dict.fromkeys(RUN_COLUMNS, 0.5) | {"target": "ptx_a", "variant": "unbounded"}
    pd.DataFrame([row]).assign(checkpoint_sha256=sha, **runconfig.job_record()).to_csv(path)
    assert run(tree, capsys=capsys)[0] == 0
    rewrite_csv(path, lambda df: df.assign(checkpoint_sha256="0" * 64))
    code, out = run(tree, capsys=capsys)
    assert code == 1 and f"BAD {path}" in out and "another checkpoint of 'ptx_a'" in out
    before = files(tree.parent)
    run(tree, "--remove", capsys=capsys)
    gone = before - files(tree.parent)
    assert "results/checklist/ptx_a.csv" in gone and TABLES <= gone
