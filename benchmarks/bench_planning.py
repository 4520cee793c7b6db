"""Scale of the workflow: DAG planning time, job counts and the compute of config/nih.yaml.

(a) grid: `snakemake -n` wall time and job count for config/test.yaml-like studies with a
    growing number of models per task and eps values (the manifest checkpoints are run first,
    once, in a temp --directory; the grids share its data settings).
(b) nih:  `snakemake -n` for the whole config/nih.yaml study against a stand-in of the REAL
    Kaggle layout: Data_Entry_2017.csv with 112,120 rows in the real format (30,805 patients,
    No Finding 60,361, Pneumothorax 5,302, Cardiomegaly 2,776), the official-size patient-wise
    lists (train_val 86,524 / test 25,596) and a tiny valid PNG under images_001..012/images/
    for every name (hard links of a few files). The manifest checkpoints run first; then the
    dry run of the whole study is timed, and (unless --no-profile) profiled with cProfile to
    show where planning time goes.
    With --real-metadata PATH the stand-in is instead the synthetic download drawn for the REAL
    metadata table (data.synthetic.metadata; `make real-metadata`): the real 112,120 rows,
    patients, follow-ups and labels, small drawn PNGs (config/real_metadata.yaml's
    data.synthetic settings), lists split patient-wise by its test_fraction (the official
    lists are not public). Its generation time is measured too.
(c) flops: forward FLOPs per 224 px image of every architecture of nih.yaml (TF profiler on
    the frozen graph, multiply-add = 2 FLOPs), and a GPU-hours estimate of the study from them.

    .venv/bin/python benchmarks/bench_planning.py --json out.json [--quick]
    .venv/bin/python benchmarks/bench_planning.py --no-grid --no-flops --no-profile \
        --real-metadata resources/nih-metadata/Data_Entry_2017_v2020.csv.gz --json out.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import yaml

ROOT = common.ROOT
SNAKEFILE = ROOT / "Snakefile"
REAL = {
    "rows": 112_120,
    "patients": 30_805,
    "train_val": 86_524,
    "test": 25_596,
    "No Finding": 60_361,
    "Pneumothorax": 5_302,
    "Cardiomegaly": 2_776,
    "folders": [4_999] + [10_000] * 10 + [7_121],
}
FILLER = ["Infiltration", "Effusion", "Atelectasis", "Nodule", "Mass", "Consolidation"]
V100_FP32_FLOPS = 15.0e12
LAST_CPU_S = float("nan")
ASSUMED_UTILISATION = 0.30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two grid sizes, no profile")
    p.add_argument("--no-grid", action="store_true", help="skip (a)")
    p.add_argument("--no-nih", action="store_true", help="skip (b)")
    p.add_argument(
        "--real-metadata",
        metavar="PATH",
        help="(b) on the synthetic download drawn for this real metadata table "
        "(config/real_metadata.yaml's data.synthetic settings) instead of the stand-in",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run of (b)")
    p.add_argument("--no-flops", action="store_true", help="skip (c)")
    p.add_argument("--workdir", help="keep the temp directories here")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- snakemake runs


def snakemake(workdir: Path, configfile: Path, *args, snakefile=SNAKEFILE, profile=None):
    """Run Snakemake in ``workdir``; return (wall seconds, stdout+stderr text).

    The CPU seconds (user + sys) of the run are kept in ``LAST_CPU_S`` (less sensitive to other
    load on the machine than the wall time)."""
    global LAST_CPU_S
    pre = [sys.executable]
    if profile:
        pre += ["-m", "cProfile", "-o", str(profile)]
    cmd = [*pre, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    cmd += ["--configfile", str(configfile), "--cores", "2", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU_S = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out = p.stdout + p.stderr
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{out[-3000:]}")
    return wall, out


def job_count(text: str) -> dict:
    """Parse Snakemake's 'Job stats' table: {rule: count, 'total': n}."""
    counts = {}
    block = text.split("Job stats:")[-1]
    for line in block.splitlines():
        m = re.match(r"^([A-Za-z_][\w]*)\s+(\d+)\s*$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
        if line.strip().startswith("total"):
            break
    return counts


def local_rules(snakefile: Path = SNAKEFILE) -> set:
    """Rules Snakemake runs itself on the submit host: the Snakefile's ``localrules:`` and the
    target rule ``all`` (no script). A dry run without a cluster executor does not tell."""
    m = re.search(r"^localrules:\n((?:    \w+,?\n)+)", snakefile.read_text(), re.M)
    return {"all"} | (set(re.findall(r"\w+", m.group(1))) if m else set())


def slurm_submissions(per_rule: dict, local: set, profile: Path) -> dict:
    """Cluster jobs of a planned study and the SLURM submissions they make with the profile's
    ``groups``/``group-components`` (each group job = one sbatch; N components per group job)."""
    prof = yaml.safe_load(profile.read_text()) or {}
    groups = dict(g.split("=", 1) for g in prof.get("groups", []))
    components = {k: int(v) for k, v in (c.split("=", 1) for c in prof.get("group-components", []))}
    cluster = {r: n for r, n in per_rule.items() if r != "total" and r not in local}
    per_group: dict = {}
    submissions = {}
    for rule, n in cluster.items():
        if rule in groups:
            per_group[groups[rule]] = per_group.get(groups[rule], 0) + n
        else:
            submissions[rule] = n
    for group, n in per_group.items():
        submissions[f"group {group}"] = -(-n // components.get(group, 1))
    return {
        "cluster_jobs": sum(cluster.values()),
        "cluster_jobs_per_rule": cluster,
        "local_rules": sorted(local),
        "submissions": sum(submissions.values()),
        "submissions_per_unit": submissions,
        "groups": groups,
        "group_components": components,
    }


def dry_run(workdir: Path, configfile: Path, repeats: int = 1, **kw) -> dict:
    walls, cpus, counts = [], [], {}
    for _ in range(repeats):
        wall, out = snakemake(workdir, configfile, "-n", **kw)
        walls.append(wall)
        cpus.append(LAST_CPU_S)
        counts = job_count(out)
    return {
        "local_rules": sorted(local_rules(kw.get("snakefile", SNAKEFILE))),
        "wall_s": walls,
        "median_s": float(np.median(walls)),
        "cpu_s": cpus,
        "median_cpu_s": float(np.median(cpus)),
        "jobs": counts.get("total"),
        "per_rule": counts,
    }


# --------------------------------------------------------------------------- (a) grid scaling


def test_like_config(k: int, n_eps: int) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    models = {}
    for task in ("pneumothorax", "cardiomegaly"):
        for i in range(k):
            models[f"{task}_m{i}"] = {"task": task, "arch": "MobileNetV3Small", "seed": i + 1}
    cfg["models"] = models
    cfg["eps"] = [float(e) for e in np.linspace(2, 8, n_eps).round(2)] if n_eps > 1 else [8]
    cfg["grid"] = [
        {"sources": "all", "data_task": "own"},
        {"sources": [f"pneumothorax_m{i}" for i in range(k)], "data_task": "cardiomegaly"},
    ]
    return cfg


def grid_scaling(work: Path, sizes) -> dict:
    d = work / "grid"
    d.mkdir(parents=True, exist_ok=True)
    base = d / "base.yaml"
    base.write_text(yaml.safe_dump(test_like_config(1, 2)))
    print("  manifests of the test-like config ...", flush=True)
    wall, _ = snakemake(
        d, base, "results/manifests/pneumothorax.csv", "results/manifests/cardiomegaly.csv"
    )
    rows = []
    for k, e in sizes:
        cfg = d / f"k{k}_e{e}.yaml"
        c = test_like_config(k, e)
        cfg.write_text(yaml.safe_dump(c))
        r = dry_run(d, cfg, repeats=1)
        r.update(models=2 * k, eps=e, adv_sets=_n_sets(c))
        rows.append(r)
        print(
            f"  {2 * k} models, {e} eps: {r['jobs']} jobs, {r['median_s']:.1f}s "
            f"({r['median_cpu_s']:.1f} CPU s)",
            flush=True,
        )
    return {"manifest_s": wall, "rows": rows}


def _n_sets(cfg: dict) -> int:
    from cxrtransfer.plan import study as plan

    return len(plan.adversarial_sets(cfg))


# --------------------------------------------------------------------------- (b) nih stand-in


def tiny_png() -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(b, format="PNG")
    return b.getvalue()


def make_nih_standin(root: Path, seed: int = 0) -> dict:
    """The real download's layout and sizes with tiny images; returns the counts written."""
    rng = np.random.default_rng(seed)
    n, n_pat = REAL["rows"], REAL["patients"]
    # images per patient: 1 + geometric, fixed up to the exact total
    sizes = 1 + rng.geometric(1.0 / (n / n_pat), n_pat) - 1
    sizes = np.maximum(sizes, 1)
    while sizes.sum() != n:
        diff = n - sizes.sum()
        idx = rng.integers(0, n_pat, abs(diff))
        if diff > 0:
            np.add.at(sizes, idx, 1)
        else:
            ok = idx[sizes[idx] > 1]
            np.subtract.at(sizes, np.unique(ok), 1)
    pids = np.arange(1, n_pat + 1)
    # official test list: whole patients, exactly REAL["test"] images
    test_pat, total = set(), 0
    for i in rng.permutation(n_pat):
        if total + sizes[i] <= REAL["test"]:
            test_pat.add(int(pids[i]))
            total += int(sizes[i])
        if total == REAL["test"]:
            break
    if total != REAL["test"]:
        raise RuntimeError(f"stand-in: could not fill the test list exactly ({total})")
    names, patient, follow = [], [], []
    for pid, k in zip(pids, sizes, strict=True):
        for fu in range(int(k)):
            names.append(f"{pid:08d}_{fu:03d}.png")
            patient.append(int(pid))
            follow.append(fu)
    labels = np.empty(n, object)
    order = rng.permutation(n)
    a = REAL["No Finding"]
    b = a + REAL["Pneumothorax"]
    c = b + REAL["Cardiomegaly"]
    labels[order[:a]] = "No Finding"
    for i in order[a:b]:
        labels[i] = "Pneumothorax" if rng.random() < 0.6 else "Effusion|Pneumothorax"
    for i in order[b:c]:
        labels[i] = "Cardiomegaly" if rng.random() < 0.6 else "Cardiomegaly|Effusion"
    for i in order[c:]:
        labels[i] = FILLER[int(rng.integers(0, len(FILLER)))]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write(
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        )
        w = csv.writer(f, lineterminator=",\n")
        for i in range(n):
            w.writerow(
                [
                    names[i],
                    labels[i],
                    follow[i],
                    patient[i],
                    20 + patient[i] % 60,
                    "MF"[patient[i] % 2],
                    "PA",
                    2500,
                    2048,
                    0.143,
                    0.143,
                ]
            )
    test = [x for x, p in zip(names, patient, strict=True) if p in test_pat]
    train_val = [x for x, p in zip(names, patient, strict=True) if p not in test_pat]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    png = tiny_png()
    start = 0
    for j, k in enumerate(REAL["folders"]):
        folder = root / f"images_{j + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        src = root / f".tiny_{j + 1:03d}.png"  # one inode per folder: < 65,000 links each
        src.write_bytes(png)
        for name in names[start : start + k]:
            try:
                os.link(src, folder / name)
            except OSError:
                (folder / name).write_bytes(png)
        start += k
    return {"rows": n, "patients": n_pat, "test": len(test), "train_val": len(train_val)}


def make_real_metadata_download(root: Path, metadata: str) -> dict:
    """The synthetic download drawn for every row of a real metadata table, with the data
    settings of config/real_metadata.yaml; returns the generator's counts."""
    from cxrtransfer.data.synthetic import SyntheticSpec, generate

    cfg = yaml.safe_load((ROOT / "config" / "real_metadata.yaml").read_text())
    synth = {**cfg["data"]["synthetic"], "metadata": str(Path(metadata).resolve())}
    counts = generate(root, SyntheticSpec.from_config(synth))
    test = (root / "test_list.txt").read_text().split()
    return {
        "rows": counts["images"],
        "patients": counts["patients"],
        "test": len(test),
        "train_val": counts["images"] - len(test),
        "labels": {k: v for k, v in counts.items() if k not in ("images", "patients")},
        "synthetic_settings": synth,
    }


def nih_config(work: Path, kaggle_dir: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "nih.yaml").read_text())
    cfg["data"]["source"] = "kaggle"
    cfg["data"]["kaggle_dir"] = str(kaggle_dir)
    p = work / "nih.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def profile_summary(prof: Path, top: int = 12) -> dict:
    st = pstats.Stats(str(prof))
    total = max(st.total_tt, 1e-9)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append(
            {
                "function": fn,
                "file": f"{Path(file).name}:{line}",
                "calls": nc,
                "tottime_s": tt,
                "cumtime_s": ct,
            }
        )

    def pick(name, file_part=""):
        c = [r for r in rows if r["function"] == name and file_part in r["file"]]
        return max(c, key=lambda r: r["cumtime_s"]) if c else None

    focus = {
        "shard_ids": pick("shard_ids", ".smk"),
        "pandas.read_csv": pick("read_csv", "readers.py"),
        "checkpoints.get": pick("get", "checkpoints.py"),
        "dry-run job printing (Job.log_info)": pick("log_info", "jobs.py"),
        "DAG construction (Workflow._build_dag)": pick("_build_dag", "workflow.py"),
    }
    by_cum = sorted(rows, key=lambda r: -r["cumtime_s"])
    ours = [r for r in by_cum if ".smk" in r["file"]][:top]
    return {
        "total_s": total,
        "focus": focus,
        "smk_functions": ours,
        "top_tottime": sorted(rows, key=lambda r: -r["tottime_s"])[:top],
    }


def nih_planning(work: Path, args) -> dict:
    d = work / "nih"
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.real_metadata:
        counts = make_real_metadata_download(d / "download", args.real_metadata)
        what = "download drawn for the real metadata"
    else:
        counts = make_nih_standin(d / "download")
        what = "stand-in download"
    make_s = time.perf_counter() - t0
    print(f"  {what} written in {make_s:.0f}s: {counts}", flush=True)
    cfg = nih_config(d, (d / "download").resolve())
    tasks = list(yaml.safe_load(cfg.read_text())["tasks"])  # the multi-label task's too
    man_s, _ = snakemake(d, cfg, *[f"results/manifests/{t}.csv" for t in tasks])
    print(f"  manifest checkpoints ({', '.join(tasks)}): {man_s:.0f}s", flush=True)
    import pandas as pd

    splits = {}  # a multi-label task's "positives": images with any of its findings
    for task in tasks:
        m = pd.read_csv(d / "results" / "manifests" / f"{task}.csv", usecols=["split", "label"])
        splits[task] = {
            s: {
                "images": int((m["split"] == s).sum()),
                "positives": int(m.loc[m["split"] == s, "label"].sum()),
            }
            for s in ("train", "val", "test")
        }
    res = {
        "download": "real metadata" if args.real_metadata else "stand-in",
        "standin": counts,
        "standin_s": make_s,
        "manifest_s": man_s,
        "splits": splits,
    }
    print(f"  splits: {splits}", flush=True)
    if args.quick:  # the whole-study dry run takes minutes on 2 busy cores
        return res
    r = dry_run(d, cfg, repeats=1)
    res["dry_run"] = r
    print(
        f"  snakemake -n (whole study): {r['jobs']} jobs, {r['median_s']:.1f}s "
        f"({r['median_cpu_s']:.1f} CPU s)",
        flush=True,
    )
    res["slurm"] = slurm_submissions(
        r["per_rule"], set(r["local_rules"]), ROOT / "profiles" / "slurm" / "config.v8+.yaml"
    )
    sub = res["slurm"]
    print(
        f"  on SLURM: {sub['cluster_jobs']} cluster jobs {sub['cluster_jobs_per_rule']}, "
        f"{sub['submissions']} submissions with the profile's groups "
        f"{sub['submissions_per_unit']}",
        flush=True,
    )
    if not args.no_profile:
        prof = d / "dry_run.prof"
        wall, _ = snakemake(d, cfg, "-n", profile=prof)
        res["profile"] = {"wall_s": wall, **profile_summary(prof)}
        f = res["profile"]["focus"]
        print(
            f"  profiled -n: {wall:.1f}s; shard_ids {f['shard_ids']}; read_csv "
            f"{f['pandas.read_csv']}",
            flush=True,
        )
    return res


# --------------------------------------------------------------------------- (c) flops


def forward_flops(arch: str, size: int) -> float:
    import tensorflow as tf
    from cxrtransfer.models.build import build_model
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    m = build_model(arch, size, "none", seed=0)
    f = tf.function(lambda x: m(x, training=False))
    cf = f.get_concrete_function(tf.TensorSpec([1, size, size, 1], tf.float32))
    frozen, _ = convert_variables_to_constants_v2_as_graph(cf)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="scope", options=opts
    )
    return float(prof.total_float_ops)


def gpu_estimate(cfg: dict, splits: dict, flops: dict) -> dict:
    """FLOPs of the study: training, attacks, predictions (see the formula in the output)."""
    from cxrtransfer.attacks.spec import spec_from_config
    from cxrtransfer.models.settings import model_settings
    from cxrtransfer.plan import study as plan

    train_f = 0.0
    per_model = {}
    for name in cfg["models"]:
        s = model_settings(cfg, name)
        sp = splits[s["task"]]
        f = flops[s["arch"]]
        n_train = sp["train"]["images"] * (0.5 if s["train_subset"] != "all" else 1.0)
        x = s["epochs"] * (3 * n_train + sp["val"]["images"]) * f
        x += (sp["val"]["images"] + sp["test"]["images"]) * f
        per_model[name] = x
        train_f += x
    attack_f = pred_f = 0.0
    sets = plan.adversarial_sets(cfg)
    for a in sets:
        src = cfg["models"][a.source]["arch"]
        spec = spec_from_config(cfg["attacks"][a.attack], plan.eps_value(cfg, a.eps))
        n_test = splits[a.data_task]["test"]["images"]
        attack_f += n_test * (spec.iterations * spec.restarts * 3 + 2) * flops[src]
        for t in plan.targets_for(cfg, a.data_task):
            pred_f += n_test * flops[cfg["models"][t]["arch"]]
    for m in cfg["models"].values():
        pred_f += splits[m["task"]]["test"]["images"] * flops[m["arch"]]
    sustained = V100_FP32_FLOPS * ASSUMED_UTILISATION
    total = train_f + attack_f + pred_f
    return {
        "flops": {"train": train_f, "attack": attack_f, "predict": pred_f, "total": total},
        "per_model_train_flops": per_model,
        "adv_sets": len(sets),
        "sustained_flops_per_s": sustained,
        "gpu_hours": {
            k: v / sustained / 3600
            for k, v in {
                "train": train_f,
                "attack": attack_f,
                "predict": pred_f,
                "total": total,
            }.items()
        },
        "assumption": f"{ASSUMED_UTILISATION:.0%} of a V100's {V100_FP32_FLOPS / 1e12:g} TFLOPS fp32 "
        "sustained (an assumption, not a measurement); backward = 2x forward; "
        "training runs every configured epoch (early stopping only lowers it)",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_planning_")
        work = Path(tmp.name)
    result = {"settings": vars(args), "machine": common.machine_info()}
    sizes = [(1, 2), (4, 4)] if args.quick else [(1, 2), (2, 2), (2, 4), (4, 4), (4, 8)]
    if not args.no_grid:
        print("(a) dry-run time against the grid size (test.yaml-like configs)", flush=True)
        result["grid"] = grid_scaling(work, sizes)
    if not args.no_nih:
        what = "the real metadata" if args.real_metadata else "a stand-in of the real download"
        print(f"(b) config/nih.yaml against {what}", flush=True)
        result["nih"] = nih_planning(work, args)
    if not args.no_flops:
        print("(c) forward FLOPs per image at 224 px", flush=True)
        nih = yaml.safe_load((ROOT / "config" / "nih.yaml").read_text())
        size = int(nih["data"]["image_size"])
        archs = sorted({m["arch"] for m in nih["models"].values()})
        result["flops_per_image"] = {a: forward_flops(a, size) for a in archs}
        result["flops_image_size"] = size
        print(
            f"  { ({a: round(f / 1e9, 2) for a, f in result['flops_per_image'].items()}) } GFLOPs"
        )
        if "nih" in result:
            result["gpu_estimate"] = gpu_estimate(
                copy.deepcopy(nih), result["nih"]["splits"], result["flops_per_image"]
            )
            g = result["gpu_estimate"]["gpu_hours"]
            print(f"  GPU-hours estimate: { ({k: round(v, 1) for k, v in g.items()}) }")
    if args.json:
        common.write_json(args.json, result)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
