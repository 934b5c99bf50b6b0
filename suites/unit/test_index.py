"""``snnverify report`` builds reports/index.{md,html} from small fixture result files, and the
run report prints a skipped column as nothing."""

import json
import re

import pytest

from snnverify.cli import main
from snnverify.report import render_run_markdown


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def run_report(**changes):
    report = {
        "name": "tiny", "command": "snnverify run --name tiny", "created": "2026-01-01T00:00:00+00:00",
        "dataset": "digits", "model": "small_resnet", "timesteps": [4, 8],
        "samples": {"train": 10, "cal": 5, "test": 20}, "config": {"levels": 8, "checkpoint": None},
        "ann_accuracy": 0.9, "traced_ann_accuracy": 0.9, "qcfs_ann_accuracy": 0.85,
        "snn_accuracy": {"4": 0.5, "8": 0.75}, "sparsity": {"4": 0.8, "8": 0.9}, "gap_pp": {},
        "quantized_snn_accuracy": {}, "neuron_layers": 7,
        "wall_time_s": {"ann_training": 1.0, "conversion": 1.0, "snn_evaluation": {"4": 1.0, "8": 2.0},
                        "compile_s": 3.0},
        "versions": {"platform": "Linux-test", "cpu_threads": 2}, "commit": "abc1234",
    }
    report.update(changes)
    return report


def speed_entry(torch_speed, cpu_speed):
    return {"model": "small_resnet", "batch": 32, "threads": 2, "snn": [
        {"target": "torch", "timesteps": 8, "images_per_s": torch_speed, "ratio_to_ann": 10.0},
        {"target": "cpu", "timesteps": 8, "images_per_s": cpu_speed, "ratio_to_ann": 2.5}]}


def gpu_speed_entry(batch, gpu_speed):
    """The gpu backend beside the reference dense on the same GPU (torch:cuda) and on the CPU."""
    return {"model": "small_resnet", "batch": batch, "threads": 2, "snn": [
        {"target": "torch", "timesteps": 8, "images_per_s": 50.0, "ratio_to_ann": 10.0},
        {"target": "torch:cuda", "timesteps": 8, "images_per_s": 400.0, "ratio_to_ann": 1.25},
        {"target": "gpu", "timesteps": 8, "images_per_s": gpu_speed, "ratio_to_ann": 2.0}]}


def bench_result():
    seeds = []
    for seed, correct in ((0, 15), (1, 17)):
        layers = {"relu": {"spikes": 10 + seed, "neuron_steps": 100}, "block.relu": {"spikes": 30, "neuron_steps": 100}}
        seeds.append({"seed": seed, "samples": {"train": 100, "cal": 5, "test": 20},
                      "counts": {"4": {"correct": correct, "samples": 20, "layers": layers}}})
    return {"protocol": "tiny-cpu", "config": {"description": "a tiny recipe", "dataset": "digits"},
            "command": "snnverify bench tiny-cpu", "created": "2026-01-02T00:00:00+00:00", "commit": "def5678",
            "machine": "Linux x86_64, 2 CPU threads", "seeds": seeds,
            "ann_accuracy": {"mean": 90.0, "std": 1.0}, "qcfs_ann_accuracy": {"mean": 89.0, "std": 1.0},
            "snn_accuracy": {"4": {"mean": 80.0, "std": 7.07}}, "sparsity": {"4": {"mean": 80.0, "std": 0.5}}}


@pytest.fixture
def reports(tmp_path):
    root = tmp_path / "reports"
    write(root / "runs" / "tiny" / "report.json", run_report())
    write(root / "bench" / "tiny-cpu" / "bench.json", bench_result())
    write(root / "speed" / "speed.json", [speed_entry(100.0, 400.0)])
    # a second speed file, which names its commit (``snnverify speed --out`` records it)
    write(root / "speed" / "bursts.json", [{**speed_entry(100.0, 300.0), "commit": "fedcba9"}])
    # the side-by-side runs of one change, in a folder of their own
    write(root / "speed" / "change" / "run1.json", [{**speed_entry(100.0, 500.0), "commit": "beef123"}])
    write(root / "gpu-check" / "run" / "gpu-speed.json", [gpu_speed_entry(32, 300.0), gpu_speed_entry(256, 600.0)])
    (root / "gpu-check" / "run" / "gpu-info.txt").write_text("device: Test GPU compute capability 9\n")
    (root / "gpu-check" / "run" / "commit.txt").write_text("0123abc some commit\n")
    write(root / "gpu-check" / "run" / "gpu-comparisons.json",
          {"gpu: cpu vs gpu, tiny": {"compared": 4321, "mismatched": 0, "cases": 3, "where": {}, "rate": 0.0}})
    write(root / "asv" / "nightly.json", {
        "machine": "ci", "commit": "c" * 40, "previous_commit": "b" * 40, "threshold_percent": 10.0,
        "regressions": 1, "created": "2026-01-03", "hardware": "Linux x86_64, 2 CPU threads",
        "rows": [{"benchmark": "b.S.time_run", "params": "8", "old": 0.0012, "new": 0.0016, "worse_by": 1 / 3,
                  "regression": True}]})
    return root


def test_index_from_fixture_results(reports):
    assert main(["report", "--reports-dir", str(reports)]) == 0
    markdown = (reports / "index.md").read_text()
    page = (reports / "index.html").read_text()
    for text in ("reports/runs/tiny/report.json", "abc1234", "Linux-test, 2 threads",  # a run, its source
                 "reports/bench/tiny-cpu/bench.json", "80.00 ± 7.07", "def5678",     # the protocol, mean ± std
                 "published: qcfs_bu2022 resnet18", "Test GPU, 2 threads, batch 32, 256", "0123abc",
                 "reports/speed/bursts.json", "fedcba9", "reports/speed/change/run1.json — machine: CPU", "beef123",
                 "reports/gpu-check/run/gpu-comparisons.json; commit 0123abc", "gpu: cpu vs gpu, tiny"):
        assert text in markdown, text
        assert text in page, text
    assert "nan" not in markdown and "Certification" not in markdown and "budget" not in markdown
    row = next(line for line in markdown.splitlines() if "b.S.time_run" in line)
    assert [cell.strip() for cell in row.split("|")[1:-1]] == ["b.S.time_run", "8", "0.0012", "0.0016", "33.3", "yes"]
    # speed-ups only within a file: 400/100 and 300/100 on the CPU files; on the GPU file the gpu rows over
    # torch:cuda at the same batch (300/400, 600/400), not over torch on the CPU (6.00, 12.00)
    assert "| 4.00 " in markdown and "| 3.00 " in markdown and "| 5.00 " in markdown and "| 0.75 " in markdown
    assert "| 1.50 " in markdown
    assert "| 6.00 " not in markdown and "| 12.00 " not in markdown
    # sparsity per layer from the counts of both seeds: 1 - (10 + 11) / 200 and 1 - 60 / 200
    assert "| 89.5 " in markdown and "| 70.0 " in markdown
    for name in ("accuracy_vs_T.png", "sparsity_tiny-cpu.png", "speed_speed.png", "speed_bursts.png",
                 "speed_change-run1.png", "speed_run.png"):
        assert (reports / "index_files" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"index_files/{name}" in page
    assert not list(reports.rglob("*.tmp"))


def test_index_shows_certification_and_budget_when_present(reports):
    write(reports / "certification" / "conv" / "report.json", {
        "converter": "conv", "version": "1.0", "environment": {"python": "3.11"}, "seed": 0,
        "clauses": [{"id": "C1", "verdict": "fail", "reason": "gap 3 pp", "measured": {"gap_pp": 3.0}}]})
    row = {"budget_epochs": 1, "recipe": "r1", "train_images": 500, "test_images": 200, "control_accuracy": 0.9,
           "date": "2026-12-02T04:00:00+00:00", "command": "snnverify budget --budgets 1", "commit": "abc1234567", "seed": 3}
    write(reports / "budget" / "digits.json", {"rows": [
        {**row, "converter": "snnverify", "snn_accuracy": {"8": 0.715}, "machine": "box, 2 CPU threads"},
        {**row, "converter": "peerlib", "version": "2.0", "recipe": "peer", "failure": "hung"}]})
    assert main(["report", "--reports-dir", str(reports)]) == 0
    markdown = (reports / "index.md").read_text()
    assert "Certification" in markdown and "| C1 " in markdown and "gap 3 pp" in markdown
    lines = markdown.split("\n")
    ours = next(line for line in lines if line.startswith("| 1 ") and "snnverify" in line)
    peer = next(line for line in lines if line.startswith("| 1 ") and "peerlib 2.0" in line)
    assert "training budget" in markdown and "`snnverify budget --budgets 1`" in markdown
    assert re.search(r"\| r1 +\| 3 +\|", ours)  # the seed beside the recipe: a replicate is told from the reference row
    assert "| 71.50 " in ours and "abc1234567" in ours and "box, 2 CPU threads" in ours  # accuracy in percent
    assert "| FAIL " in peer and "not recorded" in peer  # a failed peer and a row without its machine


def test_a_broken_result_file_is_named(reports, capsys):
    (reports / "bench" / "tiny-cpu" / "bench.json").write_text("{")
    assert main(["report", "--reports-dir", str(reports)]) == 2
    assert "bench.json" in capsys.readouterr().err


def test_run_report_skipped_column_is_blank_and_compile_time_apart():
    markdown = render_run_markdown(run_report())
    assert "nan" not in markdown
    assert "3.0 s of one-off kernel compilation" in markdown


def test_regenerate_line_warns_about_a_checkpoint_outside_the_repository():
    markdown = render_run_markdown(run_report(config={"levels": 8, "checkpoint": "/tmp/elsewhere/ann.pt"}))
    assert "needs the checkpoint /tmp/elsewhere/ann.pt" in markdown
    committed = "reports/runs/fashion-mnist-small_resnet/ann.pt"
    assert "needs the checkpoint" not in render_run_markdown(run_report(config={"levels": 8, "checkpoint": committed}))
