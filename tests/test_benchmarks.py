"""Every benchmark script runs in the suite, in its --tiny mode (a step or two, small sizes), so
that a change that breaks one fails `make test` instead of waiting for the next measurement.

Each test runs the script's own ``main`` in this process (torch is imported once) on the real
data sets of ../shared/data and asserts on the table it prints.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries

from napari_unet.choices import IGNORE_CLASS

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"



def run_script(relative: str, argv: list[str], capsys) -> str:
    """Run ``main(argv)`` of a benchmark script; its stdout."""
    path = ROOT / relative
    name = f"_bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up
    try:
        spec.loader.exec_module(module)
        status = module.main(argv)
    finally:
        sys.modules.pop(name, None)
    assert status in (None, 0), f"{relative} {' '.join(argv)} returned {status}"
    return capsys.readouterr().out


def test_speed_prints_every_preset_and_mode(capsys):
    out = run_script("benchmarks/speed.py", ["--tiny", "--device", "cpu"], capsys)
    for preset in ("industrial", "isbi2012", "volume3d"):
        for mode in ("train", "predict"):
            assert re.search(rf"{preset}\s+{mode}\s+cpu\s+off", out), (preset, mode, out)
    assert "x eager fp32" in out and "% of matmul peak" in out


def test_pipeline_runs_every_preset_end_to_end(capsys):
    # volume3d trains the BraTS 2021 regions (labels 0/1/2/4): the model-only row crashed on
    # "Class values must be smaller than num_classes" when its loss ignored the regions
    out = run_script("benchmarks/pipeline.py",
                     ["--tiny", "--device", "cpu", "--data-root", str(DATA)], capsys)
    for preset in ("industrial", "isbi2012", "volume3d"):
        line = next(line for line in out.splitlines() if line.startswith(f"pipeline: preset={preset}"))
        assert "nan" not in line, line
        # --tiny runs full precision on every CPU (bf16 only where native would make the
        # suite's arithmetic depend on the machine)
        assert re.search(r"\s+off\s", next(row for row in out.splitlines()
                                           if row.strip().startswith(preset))), out
    # issue 35: train() of a tiny model against a bare loop, in steps/s (no timing asserted)
    overhead = dict(pair.split("=") for pair in next(
        line for line in out.splitlines() if line.startswith("overhead:")).split()[1:])
    assert overhead["device"] == "cpu" and overhead["amp"] == "off", overhead
    assert float(overhead["train_steps_s"]) > 0 and float(overhead["bare_steps_s"]) > 0
    assert re.search(r"^ +train\(\) +[\d.]+ +[\d.]+ +[\d.]+ ", out, re.M), out


@pytest.mark.parametrize("dataset, keys", [
    ("isbi2012", ("membrane_dice", "mean_dice", "soft_dice", "pixel_error")),
    ("dagm2007", ("per_image_dice", "defect_dice")),
    ("brats2013", ("wt_dice", "tc_dice", "et_dice", "wt_cored_dice", "et_largest_dice")),
])
def test_accuracy_scores_a_fold_through_the_engines_evaluate(dataset, keys, capsys, tmp_path):
    # BraTS: a recipe change by --set (the scanner augmentations) and the postprocessed scores
    changes = ["--set", "gamma=0.5", "--set", "low_resolution=0.5"] if dataset == "brats2013" \
        else []
    out = run_script("benchmarks/accuracy.py",
                     ["--dataset", dataset, "--tiny", "--data-root", str(DATA),
                      "--out", str(tmp_path), *changes], capsys)
    if changes:
        [config] = tmp_path.rglob("config.yaml")
        assert "gamma: 0.5" in config.read_text() and "low_resolution: 0.5" in config.read_text()
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"dataset={dataset} budget=cpu folds=0"), summary
    for key in keys:
        assert re.search(rf"\b{key}=(\d\.\d{{4}}|nan)\b", summary), (key, summary)
    if dataset == "brats2013":  # each case's own line, then the mean over the cases
        assert len(re.findall(r"^  case=pat\d+ wt_dice=", out, re.M)) == 1
        # --score: the run trained nothing more, alone and as an ensemble (here of itself:
        # the same scores), on other data
        case = [str(DATA / "brats2013" / f"pat0003_{part}.tif") for part in ("image", "labels")]
        scores = []
        for runs in ([tmp_path / "fold0"], [tmp_path / "fold0"] * 2):
            out = run_script("benchmarks/accuracy.py", [
                "--dataset", dataset, "--tiny", "--score", *map(str, runs),
                "--extra-eval", *case], capsys)
            [line] = [line for line in out.splitlines() if line.startswith("extra: runs=")]
            scores.append(re.search(r"wt_dice=(\S+) tc_dice=(\S+)", line).groups())
        assert scores[0] == scores[1], scores


def test_cpu_backends_prints_a_row_per_model(capsys):
    out = run_script("benchmarks/cpu_backends.py", ["--tiny", "--models", "tiny_unet"], capsys)
    assert out.splitlines()[0].startswith("| model, input | torch fp32 | torch bf16 |")
    assert out.splitlines()[2].startswith("| TinyUNet base 4, 1 x 64^2 | ")


def test_inference_against_monai_runs_without_monai_too(capsys):
    out = run_script("benchmarks/inference_vs_monai.py", ["--tiny"], capsys)
    assert re.search(r"^napari_unet \(channels-last\) \| [\d.]+ ", out, re.M), out
    assert re.search(r"^napari_unet \(NCHW\) +\| [\d.]+ ", out, re.M), out


def test_scaling_trains_on_one_and_two_processes(capsys):
    out = run_script("benchmarks/scaling.py", ["--tiny"], capsys)
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["1", "1"], ["2", "2"]], out
    assert all(float(row[2]) > 0 for row in rows)


def test_gpu_check_writes_its_report_without_a_gpu(capsys, tmp_path, monkeypatch):
    import torch

    # on a GPU machine too: its real work is `make gpu-check`, here the report is checked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "gpu-check.md"
    out = run_script("benchmarks/gpu_check.py", ["--tiny", "--out", str(report)], capsys)
    text = report.read_text()
    assert "| gpus | 0 |" in text and "| CUDA tests | skipped | 0 |" in text
    assert "no GPU" in text and "| step | status | seconds |" in out


def test_any_data_plans_trains_and_scores_a_2d_and_a_3d_set(capsys):
    out = run_script("benchmarks/any_data.py",
                     ["--tiny", "--sets", "dsb2018", "ovules3d", "--data-root", str(DATA)],
                     capsys)
    rows = [line for line in out.splitlines() if line.startswith("any_data:")]
    recipes = {(m["name"], m["recipe"]) for m in (dict(pair.split("=") for pair in
                                                       row.split()[1:]) for row in rows)}
    assert {("dsb2018", "auto"), ("dsb2018", "industrial"), ("ovules3d", "auto"),
            ("ovules3d", "volume3d")} <= recipes, out
    assert "model = unet3d" in out and "model = unet:" in out  # each set's plan is printed
    for row in rows:
        fields = dict(pair.split("=") for pair in row.split()[1:])
        assert 0.0 <= float(fields["dice"]) <= 1.0 and 0.0 <= float(fields["otsu"]) <= 1.0
        assert int(fields["steps"]) == 2


def test_sparse_simulates_strokes_and_slices_and_trains_on_them(capsys):
    out = run_script("benchmarks/sparse.py", ["--tiny", "--dataset", "dsb2018", "ovules3d",
                                              "--fraction", "0.05", "--strokes", "skeleton",
                                              "edges", "--data-root", str(DATA)],
                     capsys)
    rows = [dict(pair.split("=") for pair in line.split()[1:])
            for line in out.splitlines() if line.startswith("sparse:")]
    assert [(row["dataset"], row["strokes"]) for row in rows] == [  # as made, then the table
        ("dsb2018", "skeleton"), ("dsb2018", "edges"), ("ovules3d", "slices")] * 2, out
    for row in rows:
        assert 0 < float(row["annotated_pixels"]) <= 0.07  # ovules: 1 slice in 20 of a crop
        assert 0.0 <= float(row["dice"]) <= 1.0 and int(row["steps"]) == 2


def test_objects_scores_both_arms_of_nuclei_and_both_ways_of_em(capsys):
    out = run_script("benchmarks/objects.py", ["--tiny", "--data-root", str(DATA)], capsys)
    rows = [dict(pair.split("=") for pair in line.split()[1:])
            for line in out.splitlines() if line.startswith("objects:")]
    arms = {(row["dataset"], row["arm"]) for row in rows}
    assert arms == {("dsb2018", "boundary"), ("dsb2018", "semantic"), ("ovules3d", "boundary"),
                    ("ovules3d", "semantic"), ("isbi2012", "membranes"),
                    ("isbi2012", "components")}, out
    for row in rows:
        assert 0.0 <= float(row["rand"]) <= 1.0 and int(row["steps"]) == 2
        if row["arm"] != "components":
            assert 0.0 <= float(row["ap50"]) <= 1.0 and int(row["true"]) > 0


def test_big_volume_predicts_on_one_and_two_workers(capsys):
    out = run_script("benchmarks/big_volume.py", ["--tiny"], capsys)
    rows = [dict(pair.split("=") for pair in line.split()[1:])
            for line in out.splitlines() if line.startswith("big_volume:")]
    assert [row["workers"] for row in rows] == ["0", "1", "2"] * 2, out
    for row in rows:
        assert float(row["seconds"]) > 0
        if row["workers"] != "0":
            assert 0.1 < float(row["peak_rss_gib_per_worker"]) < 2


def test_simulated_strokes_follow_the_mask_and_cover_the_fraction():
    spec = importlib.util.spec_from_file_location("_bench_strokes", ROOT / "benchmarks/sparse.py")
    sparse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sparse)
    mask = np.zeros((128, 128), np.uint8)
    for y in range(8, 128, 32):
        for x in range(8, 128, 32):
            mask[y:y + 16, x:x + 16] = 1
    drawn = sparse.strokes(mask, 0.05, np.random.default_rng(0))
    labelled = drawn != IGNORE_CLASS
    assert abs(labelled.mean() - 0.05) < 0.01
    assert np.array_equal(drawn[labelled], mask[labelled])  # strokes never cross a boundary
    assert (drawn == 1).any() and (drawn == 0).any()
    near_edge = binary_dilation(find_boundaries(mask), iterations=3)
    edges = sparse.strokes(mask, 0.05, np.random.default_rng(0), lines="edges")
    drawn_edges = edges != IGNORE_CLASS
    assert abs(drawn_edges.mean() - 0.05) < 0.01
    assert np.array_equal(edges[drawn_edges], mask[drawn_edges])
    assert near_edge[drawn_edges].all() and not near_edge[labelled].all()  # edges, not middles
    assert ((edges == 1) & near_edge).any() and ((edges == 0) & near_edge).any()  # both sides
    thin = np.zeros((32, 32), np.uint8)
    thin[10:12, 4:28] = 1  # too thin for a line inside its edge: its skeleton instead
    assert (sparse.edge_line(thin == 1) & (thin == 1)).sum() > 10
    volume = np.arange(20)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    slices = sparse.some_slices(volume, 0.2)
    assert [z for z in range(20) if (slices[z] != IGNORE_CLASS).all()] == [0, 5, 10, 15]


def test_builtin_prints_zero_shot_and_fine_tune_rows(capsys):
    out = run_script("benchmarks/builtin.py", ["--tiny", "--fine-tune", "--data-root", str(DATA)],
                     capsys)
    rows = [dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            for line in out.splitlines() if line.startswith("builtin:")]
    models = [r["model"] for r in rows]
    assert {"nuclei", "nuclei+strokes", "scratch+strokes"} <= set(models)
    zero_shot = next(r for r in rows if r["model"] == "nuclei" and r["data"] == "dsb2018")
    assert float(zero_shot["dice"]) > 0.8 and float(zero_shot["ap50"]) > 0.5  # no training
    assert all(0 <= float(r["dice"]) <= 1 and float(r["seconds"]) > 0 for r in rows)


def test_live_plays_an_annotator_and_the_batch_way_beside_it(capsys, tmp_path):
    out = run_script("benchmarks/live.py", ["--tiny", "--data-root", str(DATA), "--png",
                                            str(tmp_path / "live.png")], capsys)
    assert (tmp_path / "live.png").stat().st_size > 0  # matplotlib's, or Pillow's
    for name in ("isbi2012", "dsb2018"):
        for mode in ("live", "batch"):
            rows = [line for line in out.splitlines()
                    if line.startswith(f"{mode}: dataset={name} ")]
            assert rows, (name, mode, out)
            for row in rows:
                dice = float(re.search(r"dice=([\d.]+)", row).group(1))
                assert 0.0 <= dice <= 1.0, row
    live_rows = [line for line in out.splitlines() if line.startswith("live: dataset=isbi2012")]
    assert int(re.search(r"strokes=(\d+)", live_rows[-1]).group(1)) >= 1


def load_module(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_mod_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_any_data_keeps_a_group_of_near_duplicates_on_one_side_of_its_split(tmp_path):
    any_data = load_module("benchmarks/any_data.py")
    names = [f"t{time}_spot{time % 4}" for time in range(12)]  # 4 spots photographed 3 times
    (tmp_path / "groups.txt").write_text(
        "".join(f"{name} spot{time % 4}\n" for time, name in enumerate(names[:-1])))
    groups = any_data.groups_of(tmp_path, names)
    assert groups[:4] == ["spot0", "spot1", "spot2", "spot3"] and groups[-1] == names[-1]
    train, test = any_data.split(len(names), groups)
    assert sorted(train + test) == list(range(12)) and test
    assert not {groups[i] for i in train} & {groups[i] for i in test}  # no spot on both sides
    assert {groups[i] for i in test} == {"spot2"}  # every third spot in sorted order
    assert any_data.groups_of(tmp_path / "nothing", names) is None  # no file: plain split
    assert any_data.split(12) == ([0, 1, 3, 4, 6, 7, 9, 10], [2, 5, 8, 11])
