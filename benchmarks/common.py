"""Shared helpers of the benchmark scripts: interleaved timing, machine info, JSON output.

Every benchmark warms each method up once, then times the methods round-robin (one repeat of
each per round), so background load on a shared machine spreads evenly over them and the
ratios measured in one run stay fair. Rates are reported as the median over the repeats, with
the minimum and maximum.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow_scripts"))  # the library, also without the editable install


def run_interleaved(methods: dict, repeats: int, units: float | dict, warmup: bool = True) -> dict:
    """Time ``methods`` (name -> zero-argument callable) round-robin.

    ``units`` is the work one call does (e.g. images), a number or a per-method dict; rates are
    units per second. A callable may return a dict with ``"units"`` to override it per call.
    Returns per method: times_s, rates, median, min, max, spread_pct, warmup_s.
    """
    res: dict[str, dict] = {}
    for name, fn in methods.items():
        res[name] = {"times_s": [], "rates": [], "warmup_s": None}
        if warmup:
            t0 = time.perf_counter()
            fn()
            res[name]["warmup_s"] = time.perf_counter() - t0
            print(f"  warm-up {name}: {res[name]['warmup_s']:.2f}s", flush=True)
    for r in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            u = units[name] if isinstance(units, dict) else units
            if isinstance(out, dict) and "units" in out:
                u = out["units"]
            res[name]["times_s"].append(dt)
            res[name]["rates"].append(u / dt)
        print(
            f"  round {r + 1}/{repeats}: "
            + ", ".join(f"{k} {v['rates'][-1]:.1f}/s" for k, v in res.items()),
            flush=True,
        )
    for v in res.values():
        summarise_rates(v)
    return res


def summarise_rates(v: dict) -> dict:
    rates = v["rates"]
    v["median"] = statistics.median(rates)
    v["min"] = min(rates)
    v["max"] = max(rates)
    v["spread_pct"] = 100.0 * (v["max"] - v["min"]) / v["median"] if v["median"] else 0.0
    return v


def ratio(res: dict, a: str, b: str) -> dict:
    """Ratio of medians a/b, and the per-round ratios' min/max (same round = same load)."""
    per_round = [x / y for x, y in zip(res[a]["rates"], res[b]["rates"], strict=True)]
    return {
        "value": res[a]["median"] / res[b]["median"],
        "per_round_median": statistics.median(per_round),
        "per_round_min": min(per_round),
        "per_round_max": max(per_round),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def write_json(path, obj) -> None:
    from cxrtransfer.core.files import write_json as _w

    _w(path, obj)


def rate_row(name: str, r: dict, unit: str = "images/s") -> str:
    """One Markdown table row: name, median, min-max, spread."""
    return (
        f"| {name} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} | "
        f"{r['spread_pct']:.0f}% | {unit} |"
    )


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def print_rates(title: str, res: dict, ratios: dict, targets: dict) -> None:
    """Print one benchmark's Markdown table of rates and its ratios with target verdicts."""
    print()
    print(title)
    print("| method | median | min-max | spread | unit |\n|---|---:|---:|---:|---|")
    for name, r in res.items():
        print(rate_row(name, r))
    for k, v in ratios.items():
        t = targets.get(k)
        verdict = (
            "" if t is None else f" (target >= {t:g}: {'met' if v['value'] >= t else 'NOT met'})"
        )
        print(f"- {k} = {v['value']:.2f}{verdict}")
