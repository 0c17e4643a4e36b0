"""The evaluation report: NDCG@K by hand, Markdown/JSON/PNG from real metrics (hand-made and Magazine baselines),
several seeds and data sets, external models, and `prefmine evaluate --json/--out-dir` on a bundle without
trained models (baselines only, no Ray)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefmine.metrics import CURVE_KS, KS, ranking_metrics
from prefmine.report import HEADLINE, ndcg_curve, write_reports

ROOT = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_real_png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    assert png_size(path) == size
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # lines, text, legend: not a blank canvas


def table_rows(md: str) -> dict[str, list[str]]:
    """Rows of the first Markdown table under the first header row that starts with `| model |`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_ndcg_at_k_by_hand_for_k_1_to_3():
    topk = np.array([[5, 2, 8], [2, 7, 5], [4, 1, 9], [3, 8, 6]])
    targets = np.array([5, 7, 9, 0])  # hit at rank 1, rank 2, rank 3, miss
    m = ranking_metrics(topk, targets, ks=(1, 2, 3))
    assert m["NDCG@1"] == pytest.approx(1 / 4)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)
    # the curve reaches the report: keys 1..3, values in K order
    assert ndcg_curve(m) == ([1, 2, 3], [m["NDCG@1"], m["NDCG@2"], m["NDCG@3"]], [None, None, None])


def test_report_from_hand_made_metrics_and_an_external_model(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 30, 40)
    good = np.stack([np.roll(np.r_[t, rng.permutation(np.setdiff1d(np.arange(30), [t]))[:19]], i % 5)
                     for i, t in enumerate(targets)])  # the target at rank 1..5
    bad = np.stack([rng.permutation(np.setdiff1d(np.arange(30), [t]))[:20] for t in targets])  # never a hit
    models = {"good": ranking_metrics(good, targets, CURVE_KS, 30), "bad": ranking_metrics(bad, targets, KS, 30),
              # from outside prefmine, three seeds as per-seed lists, only three Ks
              "recbole_SASRec": {"NDCG@5": [0.20, 0.30, 0.25], "NDCG@10": [0.3, 0.4, 0.35],
                                 "NDCG@20": [0.4, 0.5, 0.45], "Recall@10": [0.5, 0.6, 0.55]}}
    report = {"phase": "test", "users": 40, "n_items": 30, "dataset": "toy", "protocol": "hand-made",
              "models": models}
    paths = write_reports(report, tmp_path / "out", stem="toy")
    assert {k: p.name for k, p in paths.items()} == {"json": "toy.json", "markdown": "toy.md",
                                                       "plot": "toy_ndcg_at_k.png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy.json", "toy.md", "toy_ndcg_at_k.png"]

    assert json.loads(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    assert "toy, test split, 40 users" in md
    rows = table_rows(md)
    assert set(rows) == {"good", "bad", "recbole_SASRec"}
    g, b, r = rows["good"], rows["bad"], rows["recbole_SASRec"]
    # good: the target at ranks 1..5 in turn, so NDCG@10 = mean of 1/log2(r + 1), r = 1..5, and Recall@10 = 1
    ndcg10 = np.mean([1 / math.log2(r + 1) for r in range(1, 6)])
    assert models["good"]["NDCG@10"] == pytest.approx(ndcg10)
    assert g["NDCG@10"] == f"**{ndcg10:.4f}**" and g["Recall@10"] == "**1.0000**"
    assert b["NDCG@10"] == "0.0000" and b["MRR@10"] == "0.0000"
    assert r["NDCG@10"] == "0.3500 ± 0.0500" and r["MRR@10"] == "–" and r["seeds"] == "3"
    assert g["seeds"] == "1" and g["Coverage@10"] == f"**{models['good']['Coverage@10']:.4f}**"
    assert list(g) == [*HEADLINE, "seeds"]
    assert ndcg_curve(models["recbole_SASRec"])[0] == [5, 10, 20]  # plotted over the Ks it has
    assert_real_png(paths["plot"], (640, 460))


def test_report_on_magazine_with_the_baselines(magazine5, tmp_path):
    from prefmine.data.dataset import load_dataset
    from prefmine.evaluate import evaluate_models

    report = evaluate_models(load_dataset(magazine5), bundle=None)
    models = report["models"]
    assert set(models) == {"popularity", "item_knn"} and report["users"] == 348
    for m in models.values():
        for k in KS:  # the headline keys as before
            for name in ("NDCG", "Recall", "MRR", "Precision", "F1", "HR", "Coverage"):
                assert 0.0 <= m[f"{name}@{k}"] <= 1.0
        ks, curve, _ = ndcg_curve(m)
        assert ks == list(CURVE_KS) and all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))  # one target
        assert not any(k.startswith(("Recall@", "MRR@")) and int(k.split("@")[1]) not in KS for k in m)
        assert len(m) == 7 * len(KS) + len(set(CURVE_KS) - set(KS))

    paths = write_reports(report, tmp_path)
    assert json.loads(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    assert "amazon2018/Magazine_Subscriptions, test split, 348 users" in md
    rows = table_rows(md)
    assert set(rows) == {"popularity", "item_knn"}
    for key in HEADLINE:
        best = max(m[key] for m in models.values())
        for name, m in models.items():
            cell = f"{m[key]:.4f}"
            assert rows[name][key] == (f"**{cell}**" if m[key] == best else cell), (name, key)
    assert "seeds" not in rows["popularity"]
    assert_real_png(paths["plot"], (640, 460))


def test_several_datasets_and_seed_summaries(tmp_path):
    mag = {"phase": "test", "users": 10, "models": {
        "prefmine": {"NDCG@10": 0.30, "NDCG@20": 0.35, "seeds": 3, "std": {"NDCG@10": 0.02, "NDCG@20": 0.01},
                     **{f"NDCG@{k}": 0.3 * k / 10 for k in (1, 2, 3)}},
        "popularity": {"NDCG@10": 0.10, "NDCG@20": 0.12}},
           "cold_start": {"cold_items": 16, "users": 9, "protocol": "10% of items held out", "models": {
               "random": {"Recall@10": [0.1, 0.3], "seeds": 2}, "prefmine": {"Recall@10": [0.5, 0.7], "seeds": 2}}}}
    bench = {"machine": {"cpus": 2, "gpu": None},
             "datasets": {"magazine": mag, "ml-small": {"users": 610, "item_knn": {"NDCG@10": 0.2, "MRR@10": 0.1}}}}
    paths = write_reports(bench, tmp_path)
    md = paths["markdown"].read_text()
    assert md.startswith("# Evaluation report") and "## Evaluation: magazine, test split, 10 users" in md
    assert "## Evaluation: ml-small" in md
    first = table_rows(md)
    assert first["prefmine"]["NDCG@10"] == "**0.3000 ± 0.0200**" and first["prefmine"]["seeds"] == "3"
    assert first["popularity"]["NDCG@10"] == "0.1000" and first["popularity"]["seeds"] == "1"
    assert "### Cold items\n\n10% of items held out (16 cold items; 9 users)." in md
    cold = table_rows(md[md.index("### Cold items"):md.index("## Evaluation: ml-small")])
    assert cold == {"random": {"Recall@10": "0.2000 ± 0.1414", "seeds": "2"},
                    "prefmine": {"Recall@10": "**0.6000 ± 0.1414**", "seeds": "2"}}
    second = table_rows(md[md.index("## Evaluation: ml-small"):])
    assert set(second) == {"item_knn"} and second["item_knn"] == {"NDCG@10": "**0.2000**", "MRR@10": "**0.1000**"}
    assert json.loads(paths["json"].read_text()) == bench
    assert_real_png(paths["plot"], (1280, 460))  # one panel per data set


def test_bad_reports_are_refused_before_anything_is_written(tmp_path):
    for bad, field in (({"users": 3}, "'models'"), ({"models": {"x": 0.3}}, "report.models.x"),
                       ({"datasets": {"a": [1]}}, "report.datasets.a"), ({"datasets": {}}, "report.datasets")):
        with pytest.raises(ValueError, match=field):
            write_reports(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_cli_writes_the_report_files(magazine5, tmp_path):
    """A bundle folder without trained models: the baselines alone, so no Ray and no training is needed."""
    from cluster.evaluate_job import run_evaluation

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "evaluate", "--data", str(magazine5), "--bundle",
                        str(bundle), "--json", str(tmp_path / "m.json")], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = bundle / "reports"
    assert sorted(p.name for p in reports.iterdir()) == ["evaluation.json", "evaluation.md",
                                                         "evaluation_ndcg_at_k.png"]
    for p in reports.iterdir():
        assert str(p) in r.stdout
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads((reports / "evaluation.json").read_text())
    assert "| item_knn |" in r.stdout and "| item_knn |" in (reports / "evaluation.md").read_text()

    out = tmp_path / "elsewhere"
    report = run_evaluation(magazine5, bundle, out_dir=out, record=False)
    assert json.loads((out / "evaluation.json").read_text()) == report
    assert png_size(out / "evaluation_ndcg_at_k.png") == (640, 460)
