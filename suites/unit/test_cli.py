"""The main job end to end on the embedded default, with small settings; and its reports."""

import json

import pytest

from snnverify.cli import main
from snnverify.jobs import JOBS
from snnverify.report import load_reference

FAST = ["--epochs", "2", "--qcfs-epochs", "1", "--finetune-epochs", "1", "--convert-timesteps", "2",
        "--timesteps", "1", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--out-dir", str(out), "--name", "quick", *FAST]) == 0
    return out / "quick"


def test_run_writes_json_markdown_plot_and_checkpoint(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("ann_accuracy", "qcfs_ann_accuracy", "traced_ann_accuracy", "snn_accuracy", "sparsity",
                "dataset", "model", "timesteps", "wall_time_s", "versions"):
        assert key in report, key
    assert report["dataset"] == "digits" and report["model"] == "small_resnet"
    assert report["timesteps"] == [1, 4]
    assert set(report["snn_accuracy"]) == set(report["sparsity"]) == set(report["quantized_snn_accuracy"]) == {"1", "4"}
    assert report["target"] == "cpu"
    assert all(0 <= v <= 1 for v in [*report["snn_accuracy"].values(), *report["sparsity"].values()])
    assert report["versions"]["torch"].startswith("2.14.1")
    assert report["samples"] == {"train": 1257, "cal": 180, "test": 360}
    markdown = (run_dir / "report.md").read_text()
    assert "| T" in markdown and "QCFS ANN" in markdown and "spikes per neuron-step" in markdown
    assert (run_dir / "accuracy_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "ann.pt").stat().st_size > 0


def test_run_from_checkpoint_reproduces_the_ann_accuracy(run_dir, tmp_path):
    first = json.loads((run_dir / "report.json").read_text())
    assert main(["run", "--out-dir", str(tmp_path), "--name", "again", "--checkpoint", str(run_dir / "ann.pt"),
                 *FAST]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["ann_accuracy"] == first["ann_accuracy"]
    assert not (tmp_path / "again" / "ann.pt").exists()  # loaded, not trained


def test_run_quantises_at_the_amplitude_width_asked_for(run_dir, tmp_path, monkeypatch):
    from snnverify import api

    widths, quantize = [], api.quantize
    monkeypatch.setattr(api, "quantize", lambda snn, **bits: (widths.append(bits), quantize(snn, **bits))[1])
    assert main(["run", "--out-dir", str(tmp_path), "--name", "narrow", "--checkpoint", str(run_dir / "ann.pt"),
                 *FAST[:-3], "--timesteps", "1", "--amplitude-bits", "8"]) == 0
    report = json.loads((tmp_path / "narrow" / "report.json").read_text())
    assert widths == [{"amplitude_bits": 8}] and report["config"]["amplitude_bits"] == 8
    assert set(report["quantized_snn_accuracy"]) == {"1"}


def test_default_run_name_follows_dataset_and_model():
    from snnverify.cli import _parser
    from snnverify.jobs.run import RunConfig

    args = _parser().parse_args(["run", "--dataset", "fashion-mnist", "--model", "resnet20"])
    options = {name: getattr(args, name) for name in RunConfig.__dataclass_fields__}
    assert RunConfig(**options).name == "fashion-mnist-resnet20"


def test_report_command_regenerates_markdown_from_json(run_dir):
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir / "report.json")]) == 0
    assert "snnverify run `quick`" in (run_dir / "report.md").read_text()


def test_bad_inputs_exit_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["run", "--out-dir", str(tmp_path), "--dataset", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err.lower()
    assert main(["run", "--out-dir", str(tmp_path), "--model", "vgg99"]) == 2
    assert "unknown model 'vgg99'" in capsys.readouterr().err
    assert main(["run", "--out-dir", str(tmp_path), "--timesteps", "0"]) == 2
    assert "timesteps must be an integer >= 1" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert main(["run", "--out-dir", str(tmp_path), "--checkpoint", str(tmp_path / "bad.pt"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "bad.pt" in error and "is not a PyTorch state dict file" in error
    assert main(["report", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("job, arguments, message", [
    ("run", ["--target", "loihi3"], "unknown target 'loihi3'"),
    ("run", ["--device", "gpu0"], "device 'gpu0' is not a torch device"),
    ("run", ["--levels", "0"], "levels must be an integer >= 1"),
    ("run", ["--qcfs-optimizer", "rmsprop"], "qcfs_optimizer"),
    ("run", ["--checkpoint", "no/such/file.pt"], "does not exist"),
    ("run", ["--convert-timesteps", "0"], "timesteps must be an integer >= 1"),
    ("run", ["--amplitude-bits", "0"], "amplitude_bits must be in 1..32, got 0"),
    ("speed", ["--targets", "cpu", "tpu"], "unknown target 'tpu'"),
    ("speed", ["--batch", "0"], "--batch must be >= 1"),
    ("speed", ["--integer", "--amplitude-bits", "0"], "--amplitude-bits must be in 1..32, got 0"),
    ("loihi2", ["--model", "vgg99"], "unknown model 'vgg99'"),
    ("sparsity", ["--penalties", "0", "-1"], "rate_penalty must be a finite number >= 0, got -1.0"),
    ("sparsity", ["--budget", "0", "--penalties", "1"], "rate_penalty=1.0 acts in training, and this conversion trains nothing"),
    ("sparsity", ["--finetune-penalty", "1"], "finetune_rate_penalty=1.0 acts in BPTT fine-tuning, and this "
                                              "conversion has finetune_epochs=0"),
    ("sparsity", ["--qcfs-lr", "0"], "conversion option qcfs_lr must be > 0, got 0.0"),
    ("sparsity", ["--model", "vgg99"], "unknown model 'vgg99'"),
    ("sparsity", ["--threads", "0"], "--threads must be in 1.."),
    ("sparsity", ["--checkpoint", "no/such/file.pt"], "does not exist"),
    ("loihi2", ["--checkpoint", "no/such/file.pt"], "does not exist"),
    ("budget", ["--ann-epochs", "0"], "--ann-epochs must be >= 1, got 0"),
])
def test_every_job_checks_its_arguments_before_any_work(tmp_path, capsys, monkeypatch, job, arguments, message):
    """A bad argument fails at once, with nothing trained, loaded or written: data loading is
    made to fail loudly, so a job that started working would report that instead."""
    from snnverify import data

    def no_work(*args, **kwargs):
        raise AssertionError("the job started working before checking its arguments")

    monkeypatch.setattr(data, "load_dataset", no_work)
    assert main([job, *arguments]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [[], *([job] for job in JOBS)], ids=lambda c: " ".join(["snnverify", *c]))
def test_every_help_page_prints(command, capsys):
    """``--help`` of the command and of every job prints its options (argparse formats help with
    %-expansion: a bare '%' in any help text turns the page into a traceback)."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: snnverify" in capsys.readouterr().out


def test_every_reference_names_its_source():
    for name in ("qcfs_bu2022", "neurocuda_tutorial_resnet18", "targets"):
        assert load_reference(name)["source"]
