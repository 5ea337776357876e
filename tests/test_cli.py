"""The ``trustgc`` command line's assembly: every subcommand present once, flags generated from
the options models (none restated), and a parser that builds without torch.

What each subcommand does is tested next to its implementation (tests/training/test_trainer.py,
tests/serving/test_integration.py, ...); this file checks the seams between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from trustgc_cli.main import COMMAND_GROUPS, build_parser, command_groups
from trustgc_cli.options import add_options, flag_name, options_from_args

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "training.commands": ["train", "evaluate", "calibrate", "ood", "corrupt", "report", "attack"],
    "trustgc_cli.core_commands": ["export-onnx"],
    "serving.commands": ["archive", "serve", "start", "stop", "classify"],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {
        "-h",
        "--help",
    }


def test_every_subproject_registers_its_subcommands_once() -> None:
    assert tuple(EXPECTED) == COMMAND_GROUPS
    registered: list[str] = []
    for module, group in zip(COMMAND_GROUPS, command_groups(), strict=True):
        parser = argparse.ArgumentParser()
        group.register(parser.add_subparsers(dest="command"))
        names = list(_subparsers(parser))
        # the subcommands the CLI had when it moved out of the core, in their owner's group
        # (later ones, e.g. `score`, are added to a group without touching this list)
        assert [name for name in names if name in EXPECTED[module]] == EXPECTED[module], module
        registered += names
    assert len(registered) == len(set(registered)), "a subcommand is declared twice"
    assert list(_subparsers(build_parser())) == registered


def test_train_flags_are_the_options_model_fields() -> None:
    from training.train_options import TrainOptions

    train = _subparsers(build_parser())["train"]
    expected = {
        flag_name(name, info)
        for name, info in TrainOptions.model_fields.items()
        if name != "command"
    }
    assert _flags(train) == expected
    assert "--no-evaluate" in expected and "--amp" in expected and "--batch-size" in expected


def test_train_arguments_build_the_options_with_the_model_defaults(tmp_path: Path) -> None:
    from training.train_options import TrainOptions

    parser = build_parser()
    given = parser.parse_args(["train", "--out", str(tmp_path), "--beta", "inf", "--no-evaluate"])
    options = options_from_args(TrainOptions, given, command="test")
    reference = TrainOptions(out=tmp_path, beta=math.inf, evaluate=False, command="test")
    assert options == reference
    defaults = {name: info.get_default() for name, info in TrainOptions.model_fields.items()}
    assert options.config == defaults["config"] and options.device == defaults["device"]
    assert options.progress is True and options.amp is None and options.resume is False
    every = parser.parse_args(
        ["train", "--out", "o", "--config", "tiny", "--epochs", "3", "--batch-size", "8"]
        + ["--lr", "0.5", "--seed", "4", "--amp", "--limit-train-samples", "9"]
        + ["--data-dir", "d", "--device", "cpu", "--resume", "--time-budget-minutes", "1.5"]
        + ["--max-steps", "2", "--no-progress"]
    )
    assert options_from_args(TrainOptions, every, command="x") == TrainOptions(
        config="tiny",
        out=Path("o"),
        epochs=3,
        batch_size=8,
        lr=0.5,
        seed=4,
        amp=True,
        limit_train_samples=9,
        data_dir=Path("d"),
        device="cpu",
        resume=True,
        time_budget_minutes=1.5,
        max_steps=2,
        progress=False,
        command="x",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--beta", "-1"], "--beta"),
        (["--beta", "nan"], "--beta"),
        (["--epochs", "1.5"], "--epochs"),
        ([], "--out"),  # required
    ],
)
def test_bad_train_values_are_usage_errors_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = [] if argv == [] else ["--out", "x"]
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["train", *out, *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_generated_flags_refuse_an_undocumented_field() -> None:
    from pydantic import BaseModel

    class Undocumented(BaseModel):
        count: int = 1

    with pytest.raises(ValueError, match="Undocumented.count has no description"):
        add_options(argparse.ArgumentParser(), Undocumented)


def test_report_overrides_are_report_options_fields() -> None:
    from training.commands import REPORT_OVERRIDES
    from training.report.options import ReportOptions

    fields = {field.name for field in dataclasses.fields(ReportOptions)}
    assert set(REPORT_OVERRIDES) <= fields
    report = _subparsers(build_parser())["report"]
    assert {f"--{name.replace('_', '-')}" for name in REPORT_OVERRIDES} <= _flags(report)


def test_ood_sets_come_from_the_ood_registry() -> None:
    from training.commands import ood_set_names
    from training.ood import OOD_SETS

    assert ood_set_names(None) == list(OOD_SETS)
    first, second = list(OOD_SETS)[:2]
    assert ood_set_names(f"{second},{first},") == [second, first]
    with pytest.raises(ValueError, match="unknown OoD set"):
        ood_set_names("no_such_set")


def test_attack_flags_come_from_attack_options() -> None:
    from training.attack_options import add_attack_arguments

    reference = add_attack_arguments(argparse.ArgumentParser())
    assert _flags(_subparsers(build_parser())["attack"]) == _flags(reference)


def test_help_builds_without_importing_torch_or_the_implementations() -> None:
    code = (
        "import sys\n"
        "from trustgc_cli.main import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'training.trainer', 'serving.server', 'ts', "
        "'serving.client') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_module_entry_point_runs_the_same_parser() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trustgc_cli", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("train", "export-onnx", "classify"):
        assert command in result.stdout


# ------------------------------------------------------------------ export-onnx (the core's)


def test_export_onnx_writes_a_checked_export_with_the_given_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from trustgc.artifact import ModelManifest, save_model
    from trustgc.config import load_model_config
    from trustgc.ibinn import IBINN
    from trustgc.onnx_backend import checked_onnx_path, load_onnx_info
    from trustgc_cli.main import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = IBINN(load_model_config("tiny")).eval()
        manifest = ModelManifest(name="tiny", config=model.config, class_names=("a", "b", "c", "d"))
        save_model(tmp_path, model, manifest)
        argv = ["export-onnx", "--model", str(tmp_path), "--opset", "17"]
        code = main([*argv, "--exporter", "torchscript"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "model.onnx" in capsys.readouterr().out
    info = load_onnx_info(tmp_path)
    assert (info["exporter"], info["opset"]) == ("torchscript", 17)
    assert not list(tmp_path.glob(".*partial*"))
    checked_onnx_path(tmp_path)  # the export is of these weights


def test_export_onnx_reports_a_missing_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trustgc_cli.main import main

    assert main(["export-onnx", "--model", str(tmp_path)]) == 2
    assert "model.json is missing" in capsys.readouterr().err
