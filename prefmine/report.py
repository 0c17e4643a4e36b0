"""Render an evaluation report: the JSON, a Markdown comparison table and a PNG of NDCG@K against K.

`write_reports(report, out_dir, stem)` writes `<stem>.json`, `<stem>.md` and `<stem>_ndcg_at_k.png`, each
atomically (temp file, then rename). It knows nothing about how the numbers were made, so a benchmark can pass
models from outside prefmine (RecBole, ...) and several data sets.

The report dict
---------------
One evaluation, as `prefmine.evaluate.evaluate_models` returns it (every key but `models` optional)::

    {"phase": "test", "users": 348, "n_items": 2428,
     "dataset": {"source": "amazon2018", "category": "Magazine_Subscriptions"},   # or a plain name
     "protocol": "leave-one-out by time, ...",
     "models": {"<model>": {"NDCG@10": 0.051, "Recall@10": 0.09, ..., "NDCG@1": ..., ..., "NDCG@20": ...}},
     "policy": {"<policy>": {"return_mean": ..., "ci95": ..., "ctr": ...}}}

or several data sets (a benchmark); each value is one evaluation as above, or directly its `models` map::

    {"datasets": {"<name>": {"phase": "test", "models": {...}}, "<name2>": {"<model>": {...}, ...}}}

A model entry maps `<Metric>@<K>` to a number; other keys are kept in the JSON and ignored here. The table shows
the headline keys (`HEADLINE`) that some model has, best value per column in bold (every metric here is
higher-is-better); the plot draws each model's `NDCG@K` for K = 1..20 over the Ks the entry has. Several seeds:
either mean values plus `"seeds": n` and `"std": {"NDCG@10": s, ...}`, or per-seed lists
(`"NDCG@10": [seed0, seed1, ...]`, mean and sample std, ddof=1, taken here). Cells then read `mean ± std`
and a `seeds` column appears; the plot shades ± std where it is known.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

HEADLINE = ("NDCG@10", "Recall@10", "MRR@10", "Precision@10", "F1@10", "NDCG@20", "Recall@20", "Coverage@10")
CURVE_MAX_K = 20
METRIC_KEY = re.compile(r"^([A-Za-z][\w-]*)@(\d+)$")


def write_reports(report: dict, out_dir: str | Path, stem: str = "evaluation") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>_ndcg_at_k.png` into `out_dir`; returns their paths by kind."""
    sections = report_sections(report)  # validates before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md",
             "plot": out_dir / f"{stem}_ndcg_at_k.png"}
    write_json(report, paths["json"])
    text = format_markdown(report)
    _atomic(paths["markdown"], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _atomic(paths["plot"], lambda tmp: _plot(sections, tmp))
    return paths


def write_json(report: dict, path: str | Path) -> None:
    """The report as indented JSON (numpy numbers and arrays converted), written atomically."""
    text = json.dumps(report, indent=2, default=_to_json)
    _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def report_sections(report: dict) -> list[tuple[str, dict, dict]]:
    """(name, evaluation, models) per data set: one for a single evaluation, one per key of `datasets`."""
    if not isinstance(report, dict):
        raise ValueError(f"report: expected a dict, got {type(report).__name__}")
    if "datasets" in report:
        if not isinstance(report["datasets"], dict) or not report["datasets"]:
            raise ValueError("report.datasets: expected a non-empty map of data set name to evaluation")
        out = []
        for name, ev in report["datasets"].items():
            if not isinstance(ev, dict):
                raise ValueError(f"report.datasets.{name}: expected a dict, got {type(ev).__name__}")
            if "models" in ev:
                out.append((str(name), ev, _models(ev["models"], f"report.datasets.{name}.models")))
            else:  # bench style: the models map itself; dict entries holding metric keys are models
                models = {m: e for m, e in ev.items() if isinstance(e, dict) and any(map(METRIC_KEY.match, e))}
                out.append((str(name), ev, _models(models, f"report.datasets.{name}")))
        return out
    if "models" not in report:
        raise ValueError("report: expected a 'models' map (one evaluation) or a 'datasets' map (several)")
    return [(_dataset_label(report.get("dataset")), report, _models(report["models"], "report.models"))]


def summarise(entry: dict) -> tuple[dict[str, float], dict[str, float], int]:
    """(mean, std, seeds) of one model entry; see the module docstring for the two multi-seed forms."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    seeds = int(entry.get("seeds") or 1)
    given_std = entry.get("std") if isinstance(entry.get("std"), dict) else {}
    for key, value in entry.items():
        if not METRIC_KEY.match(key) or isinstance(value, bool):
            continue
        if isinstance(value, (list, tuple, np.ndarray)):
            values = np.asarray(value, dtype=np.float64).ravel()
            if values.size == 0:
                continue
            mean[key] = float(values.mean())
            std[key] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            seeds = max(seeds, int(values.size))
        elif isinstance(value, (int, float, np.number)):
            mean[key] = float(value)
            if key in given_std:
                std[key] = float(given_std[key])
    return mean, std, seeds


def ndcg_curve(entry: dict, max_k: int = CURVE_MAX_K) -> tuple[list[int], list[float], list[float | None]]:
    """The Ks (1..max_k) an entry has `NDCG@K` for, in order, with their means and stds (None if unknown)."""
    mean, std, _ = summarise(entry)
    ks = sorted(int(m.group(2)) for m in map(METRIC_KEY.match, mean) if m and m.group(1) == "NDCG")
    ks = [k for k in ks if 1 <= k <= max_k]
    return ks, [mean[f"NDCG@{k}"] for k in ks], [std.get(f"NDCG@{k}") for k in ks]


def format_markdown(report: dict, keys: tuple[str, ...] | None = None) -> str:
    """The comparison table(s) as Markdown: one per data set, best value per column in bold."""
    sections = report_sections(report)
    many = len(sections) > 1 or "datasets" in report
    lines = ["# Evaluation report", ""] if many else []
    for name, ev, models in sections:
        lines += [f"{'##' if many else '#'} {_title(name, ev, 'Evaluation')}", ""]
        facts = [f"{ev['n_items']} items" if ev.get("n_items") is not None else "", ev.get("protocol") or ""]
        facts = [f for f in facts if f]
        lines += [("; ".join(facts) + ". " if facts else "") + "Best value per column in **bold**.", ""]
        lines += _model_table(models, keys) + [""]
        cold = ev.get("cold_start")
        if isinstance(cold, dict) and isinstance(cold.get("models"), dict) and cold["models"]:
            what = "; ".join(f"{cold[k]} {k.replace('_', ' ')}" for k in ("cold_items", "users", "targets") if k in cold)
            lines += [f"{'###' if many else '##'} Cold items", "",
                      ((cold.get("protocol") or "items never seen in training") + (f" ({what})" if what else "")
                       + ". Best value per column in **bold**."), ""]
            lines += _model_table(_models(cold["models"], f"{name}.cold_start.models"), None) + [""]
        if isinstance(ev.get("policy"), dict) and ev["policy"]:
            lines += [f"{'###' if many else '##'} Policy in the simulator", ""] + _plain_table(ev["policy"]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _model_table(models: dict, keys: tuple[str, ...] | None) -> list[str]:
    stats = {name: summarise(entry) for name, entry in models.items()}
    present = [k for mean, _, _ in stats.values() for k in mean]
    if keys is None:
        keys = tuple(k for k in HEADLINE if k in present)
        if not keys:  # no headline key at all: the K = 5, 10, 20 keys, else every metric, first seen first
            seen = list(dict.fromkeys(present))
            keys = tuple(k for k in seen if METRIC_KEY.match(k).group(2) in ("5", "10", "20")) or tuple(seen)
    multi = any(seeds > 1 or std for _, std, seeds in stats.values())
    best = {}
    for k in keys:
        values = [mean[k] for mean, _, _ in stats.values() if k in mean and math.isfinite(mean[k])]
        best[k] = max(values) if values else None
    header = ["model", *keys] + (["seeds"] if multi else [])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, (mean, std, seeds) in stats.items():
        cells = [str(name)]
        for k in keys:
            if k not in mean:
                cells.append("–")
                continue
            cell = f"{mean[k]:.4f}" + (f" ± {std[k]:.4f}" if k in std and (multi or std[k]) else "")
            bold = best[k] is not None and math.isfinite(mean[k]) and math.isclose(mean[k], best[k], abs_tol=1e-12)
            cells.append(f"**{cell}**" if bold else cell)
        if multi:
            cells.append(str(seeds))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plain_table(rows: dict) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows.values() if isinstance(r, dict) for k, v in r.items()
                              if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)))
    lines = ["| name | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        r = r if isinstance(r, dict) else {}
        lines.append(f"| {name} | " + " | ".join(f"{float(r[c]):.4f}" if c in r else "–" for c in cols) + " |")
    return lines


def _plot(sections: list[tuple[str, dict, dict]], path: Path) -> None:
    # Figure + the Agg canvas directly: no pyplot, so no global backend state and no display is ever needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(len(sections), 3)
    nrows = math.ceil(len(sections) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.6 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, ev, models) in zip(axes, sections):
        drawn = 0
        for i, (model, entry) in enumerate(models.items()):
            ks, mean, std = ndcg_curve(entry)
            if not ks:
                continue
            (line,) = ax.plot(ks, mean, marker="o", markersize=3, linewidth=1.5, label=str(model),
                              linestyle=("-", "--", ":", "-.")[(i // 10) % 4])
            known = [(k, m, s) for k, m, s in zip(ks, mean, std) if s]
            if known and len(known) == len(ks) > 1:  # std at every K: a band
                m, s = np.asarray(mean), np.asarray(std, dtype=np.float64)
                ax.fill_between(ks, m - s, m + s, color=line.get_color(), alpha=0.15, linewidth=0)
            elif known:  # std at some Ks only: error bars there
                k, m, s = zip(*known)
                ax.errorbar(k, m, yerr=s, fmt="none", ecolor=line.get_color(), capsize=3, linewidth=1)
            drawn += 1
        title = _title(name, ev, "NDCG@K against K", sep="\n")
        ax.set_title("\n".join(textwrap.fill(line, 70) for line in title.split("\n")), fontsize="medium")
        ax.set_xlabel("K (cut-off)")
        ax.set_ylabel("NDCG@K")
        ax.set_xlim(0.5, CURVE_MAX_K + 0.5)
        ax.set_xticks(range(1, CURVE_MAX_K + 1))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no NDCG@K values", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(sections):]:
        ax.set_visible(False)
    fig.savefig(path, format="png")


def _title(name: str, ev: dict, what: str, sep: str = ": ") -> str:
    parts = [p for p in (name, f"{ev['phase']} split" if ev.get("phase") else "",
                         f"{ev['users']} users" if ev.get("users") is not None else "") if p]
    return what + sep + ", ".join(parts) if parts else what


def _dataset_label(dataset) -> str:
    if isinstance(dataset, dict):
        return "/".join(str(dataset[k]) for k in ("source", "category") if dataset.get(k))
    return str(dataset) if dataset else ""


def _models(models, where: str) -> dict:
    if not isinstance(models, dict):
        raise ValueError(f"{where}: expected a map of model name to metrics, got {type(models).__name__}")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}.{name}: expected a dict of metric values, got {type(entry).__name__}")
    return models


def _to_json(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, set, frozenset)):
        return str(o) if isinstance(o, Path) else sorted(o)
    return float(o)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
