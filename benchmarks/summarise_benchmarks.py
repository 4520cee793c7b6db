"""Where do the cluster hours go? Summarise Snakemake ``benchmark:`` files per rule.

Reads every ``*.tsv`` under a results' benchmark directory (columns ``s``, ``h:m:s``,
``max_rss``, ``max_vms``, ``max_uss``, ``max_pss``, ``io_in``, ``io_out``, ``mean_load``,
``cpu_time``; one row per repeat) and prints one Markdown table row per rule: jobs, total and
mean wall seconds, the longest job, total CPU seconds and the largest max_rss (MB).

Rule names come from the ``benchmark:`` patterns in the workflow's ``rules/*.smk`` (so
``predict/{target}/clean/...`` and ``predict/{target}/adv/...`` are told apart); files that match
no pattern are grouped by their first directory.

    .venv/bin/python benchmarks/summarise_benchmarks.py results/benchmarks [--out FILE.md]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("s", "max_rss", "cpu_time")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bench_dir", help="the benchmark directory, e.g. results/benchmarks")
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    p.add_argument("--rules-dir", default=str(ROOT / "rules"), help="where the *.smk files are")
    return p.parse_args(argv)


def benchmark_patterns(rules_dir: str | Path) -> list[tuple[str, re.Pattern]]:
    """(rule, regex of its benchmark path relative to results/benchmarks/) from rules/*.smk."""
    out = []
    files = sorted(Path(rules_dir).glob("*.smk"))
    snakefile = Path(rules_dir).parent / "Snakefile"
    if snakefile.is_file():
        files.append(snakefile)
    for f in files:
        rule = None
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(?:rule|checkpoint)\s+(\w+)\s*:", line)
            if m:
                rule = m.group(1)
                continue
            if rule and line.strip() == "benchmark:" and i + 1 < len(lines):
                m = re.match(r'\s*f?"([^"]+)"', lines[i + 1])
                if m:
                    out.append((rule, _to_regex(m.group(1))))
    # most specific (longest literal part) first
    out.sort(key=lambda x: -len(re.sub(r"\(\?:[^)]*\)", "", x[1].pattern)))
    return out


def _to_regex(pattern: str) -> re.Pattern:
    pattern = re.sub(r"^.*?benchmarks/", "", pattern)
    parts = re.split(r"(\{[^}]+\})", pattern)
    rx = "".join("(?:[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rf"^{rx}$")


def rule_of(rel: str, patterns) -> str:
    for rule, rx in patterns:
        if rx.match(rel):
            return rule
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else Path(rel).stem


def read_benchmarks(bench_dir: str | Path, patterns):
    import pandas as pd

    rows = []
    root = Path(bench_dir)
    for f in sorted(root.rglob("*.tsv")):
        try:
            df = pd.read_csv(f, sep="\t")
        except Exception as e:  # noqa: BLE001 - report and skip unreadable files
            print(f"warning: skipping {f}: {e}", file=sys.stderr)
            continue
        if df.empty or "s" not in df.columns:
            continue
        vals = {c: pd.to_numeric(df[c], errors="coerce") if c in df else None for c in COLUMNS}
        rel = f.relative_to(root).as_posix()
        rows.append(
            {
                "rule": rule_of(rel, patterns),
                "file": rel,
                "s": float(vals["s"].mean()),  # mean over repeats of this job
                "max_rss": float(vals["max_rss"].max())
                if vals["max_rss"] is not None
                else float("nan"),
                "cpu_time": float(vals["cpu_time"].mean())
                if vals["cpu_time"] is not None
                else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "file", "s", "max_rss", "cpu_time"])


def summarise(df):
    g = df.groupby("rule")
    out = g.agg(
        jobs=("s", "size"),
        total_s=("s", "sum"),
        mean_s=("s", "mean"),
        max_s=("s", "max"),
        cpu_s=("cpu_time", "sum"),
        max_rss_mb=("max_rss", "max"),
    ).sort_values("total_s", ascending=False)
    out["share"] = out["total_s"] / out["total_s"].sum()
    return out.reset_index()


def to_markdown(summary, bench_dir) -> str:
    total = summary["total_s"].sum()
    lines = [
        f"Snakemake benchmark files under `{bench_dir}`: {int(summary['jobs'].sum())} jobs, "
        f"{total:.0f} s ({total / 3600:.2f} h) of job wall time in total.",
        "",
        "| rule | jobs | total s | share | mean s | max s | CPU s | max of max_rss (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        rss = "" if r.max_rss_mb != r.max_rss_mb else f"{r.max_rss_mb:.0f}"
        cpu = "" if r.cpu_s != r.cpu_s else f"{r.cpu_s:.1f}"
        lines.append(
            f"| {r.rule} | {r.jobs} | {r.total_s:.1f} | {r.share:.0%} | {r.mean_s:.2f} | "
            f"{r.max_s:.1f} | {cpu} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    d = Path(args.bench_dir)
    if not d.is_dir():
        print(f"error: '{d}' is not a directory (run the workflow first)", file=sys.stderr)
        return 2
    df = read_benchmarks(d, benchmark_patterns(args.rules_dir))
    if df.empty:
        print(f"error: no Snakemake benchmark .tsv files under '{d}'", file=sys.stderr)
        return 1
    md = to_markdown(summarise(df), d)
    print(md, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
