"""The command line generated from the API's signatures: every option in both spellings and with help, switches,
typed choices, command-line values over configs, defaults equal to the functions', --help without torch."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import typing

import pytest
import yaml

import localizer
from localizer.cli import build_parser, main, normalize, option_actions

COMMANDS = ("extract", "select", "ablate", "run", "check")
NOT_VALUES = {"--help", "--config", "--print_config", "--select", "--ablate", "--trainer"}  # no value of their own


def sample(action) -> str:
    """A value of the option's type, as text (what a user would type)."""
    hint = getattr(action, "_typehint", None)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    literal = [a for a in [hint, *args] if typing.get_origin(a) is typing.Literal]
    if literal:
        return str(typing.get_args(literal[0])[-1])
    if hint is bool:
        return "false" if action.default is True else "true"
    if hint is int or int in args:
        return "3"
    if hint is float or float in args:
        return "0.5"
    if typing.get_origin(hint) is list:
        return "[]"
    return "x"


def required(parser, command: str) -> list[str]:
    """Values for the required options (run's come from its default config; check takes positional files)."""
    if command == "check":
        return ["a.h5"]
    out = []
    for name, action in option_actions(parser).items():
        if action.required and name not in NOT_VALUES and command != "run":
            out += [name, sample(action)]
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_parses_in_both_spellings(command):
    parser = build_parser(command)
    actions = option_actions(parser)
    assert len(actions) > 8 or command == "check"
    positional = [a for a in parser._actions if not a.option_strings]
    assert all(a.help for a in positional), command
    for name, action in actions.items():
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{command} {name}: no help"
    base = required(parser, command)
    for name, action in actions.items():
        if name in NOT_VALUES or action.dest in ("help",):
            continue
        value = sample(action)
        dashed = "--" + name[2:].replace("_", "-")
        canonical = parser.parse_args(normalize([*base, name, value], parser, command))
        spelled = parser.parse_args(normalize([*base, dashed, value], parser, command))
        assert spelled == canonical, f"{command} {dashed}"
        default = parser.parse_args(normalize(base, parser, command))
        if value != "[]" and str(default.get(action.dest)).lower() != value:
            assert canonical.get(action.dest) != default.get(action.dest), f"{command} {name} {value} had no effect"


def test_help_texts_are_clean():
    for command in COMMANDS:
        text = build_parser(command).format_help()
        assert "%%" not in text and "Customize every aspect" not in text and "training" not in text.lower(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_neither_torch_nor_lightning(command):
    code = (
        f"import sys\nfrom localizer.cli import main\nrc = main([{command!r}, '--help'])\n"
        "heavy = [m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "HEAVY [] 0"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], False), (["--abs"], True), (["--abs", "true"], True), (["--abs", "false"], False), (["--abs=false"], False)],
)
def test_switches_work_the_same_way_everywhere(argv, expected):
    for command, prefix in (("select", ""), ("extract", ""), ("run", "select.")):
        parser = build_parser(command)
        args = [a.replace("--abs", f"--{prefix}abs") for a in argv]
        base = [] if command == "run" else required(parser, command)
        cfg = parser.parse_args(normalize([*base, *args, "--overwrite"] if command != "run" else args, parser, command))
        want = expected if command != "run" or argv else True  # the language config sets select.abs: true
        assert cfg.get(f"{prefix}abs") is want, (command, argv)


def test_errors_name_the_option_the_value_and_what_is_allowed(capsys):
    assert main(["select", "--activations", "a.h5", "--out", "s.h5", "--alternative", "less"]) == 2
    assert "option --alternative: 'less' is not one of greater, two-sided" in capsys.readouterr().err
    assert main(["extract", "--model", "m", "--stimuli", "s", "--out", "o.h5", "--batch-size", "abc"]) == 2
    assert "option --batch_size: expected int, got 'abc'" in capsys.readouterr().err
    assert main(["select", "--activations", "a.h5", "--out", "s.h5", "--count", "many"]) == 2
    assert "option --count: expected int, got 'many'" in capsys.readouterr().err
    assert main(["ablate", "--selection", "s.h5", "--task", "guess"]) == 2
    assert "option --task: 'guess' is not one of classification, next-token, minimal-pairs, agreement" in (
        capsys.readouterr().err
    )
    assert main(["select", "--out", "s.h5"]) == 2
    assert "missing required option --activations" in capsys.readouterr().err
    assert main(["run", "--config", "no-such-config.yaml"]) == 2
    assert "option --config: File does not exist" in capsys.readouterr().err


def printed_config(capsys, *argv) -> dict:
    assert main(["run", *argv, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_command_line_values_win_over_configs_wherever_they_stand(capsys):
    faces = printed_config(capsys, "--config", "faces")
    assert faces["model"] == "efficientnet-lite0" and faces["ablate"]["tasks"][0]["task"] == "agreement"
    for argv in (["--model", "X", "--config", "faces"], ["--config", "faces", "--model", "X"]):
        cfg = printed_config(capsys, *argv)
        assert cfg["model"] == "X" and cfg["stimuli"] == "faces", argv
    language = printed_config(capsys)
    assert language["model"] == "gemma-3-270m" and language["select"]["abs"] is True
    dashed = printed_config(capsys, "--output-dir", "o", "--select.split-half", "--ablate.n-controls", "2")
    assert (
        dashed["output_dir"] == "o" and dashed["select"]["split_half"] is True and dashed["ablate"]["n_controls"] == 2
    )


def test_run_exposes_every_option_of_its_steps_with_their_defaults():
    """run's defaults are its steps' defaults, except what the language config (run's default job) sets."""
    from localizer.resources import read_text

    run = build_parser("run")
    defaults = run.get_defaults()
    language = yaml.safe_load(read_text("configs/language.yaml"))
    preset = {k for k, v in language.items() if not isinstance(v, dict)}
    preset |= {f"{k}.{kk}" for k, v in language.items() if isinstance(v, dict) for kk in v}
    for step, prefix, skip in (
        (localizer.extract, "", {"model", "stimuli", "out", "selection", "log_dir", "trainer", "overwrite", "resume"}),
        (localizer.select, "select.", {"activations", "out", "overwrite", "log_dir"}),
        (localizer.ablate, "ablate.", {"selection", "task", "model", "task_data", "out", "overwrite", "max_length"}),
    ):
        for name, parameter in inspect.signature(step).parameters.items():
            if (
                name in skip
                or name in ("log_dir", "trust_remote_code", "dtype", "device_map", "max_memory", "trainer")
                and prefix == "ablate."
            ):
                continue
            if prefix == "" and name in inspect.signature(localizer.select).parameters:
                continue  # selection options of extract: run takes them as --select.*
            assert f"--{prefix}{name}" in option_actions(run), f"run lacks --{prefix}{name}"
            key = f"{prefix}{name}"
            want = language[key] if key in language else language[prefix[:-1]][name] if key in preset else None
            assert defaults[key] == (want if key in preset else parameter.default), f"--{key}"


def test_the_shipped_configs_only_use_existing_options():
    from localizer.resources import CONFIGS, read_text

    parser = build_parser("run")
    for name in CONFIGS:
        config = yaml.safe_load(read_text(f"configs/{name}.yaml"))
        flat = [k for k, v in config.items() if not isinstance(v, dict)]
        flat += [f"{k}.{kk}" for k, v in config.items() if isinstance(v, dict) for kk in v]
        for key in flat:
            assert f"--{key}" in option_actions(parser), f"{name}.yaml: {key}"


def test_one_function_per_command_on_the_package():
    for command in COMMANDS:
        function = getattr(localizer, command)
        assert callable(function) and function.__doc__, command
    assert localizer.Selection.read and localizer.Selection.write


def test_library_errors_name_parameters_and_the_cli_names_options(tmp_path, capsys):
    from helpers import synthetic, write_activation_file

    layers, positive = synthetic(n_pos=6, n_ctl=6, units=(20,))
    acts = write_activation_file(tmp_path / "a.h5", layers, positive)
    (tmp_path / "s.h5").write_bytes(b"not mine")
    with pytest.raises(localizer.LocalizerError, match=r"exists; pass overwrite=True to replace it"):
        localizer.select(str(acts), str(tmp_path / "s.h5"), log_dir=None)
    with pytest.raises(localizer.LocalizerError, match=r"count must be >= 1"):
        localizer.select(str(acts), str(tmp_path / "t.h5"), count=0, log_dir=None)
    assert main(["select", "--activations", str(acts), "--out", str(tmp_path / "s.h5")]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    with pytest.raises(localizer.LocalizerError, match=r"pass overwrite=True"):  # main() did not change the library
        localizer.select(str(acts), str(tmp_path / "s.h5"), log_dir=None)
    assert (tmp_path / "s.h5").read_bytes() == b"not mine"


def test_old_and_odd_spellings(tmp_path):
    parser = build_parser("select")
    base = ["--activations", "a.h5", "--out", "s.h5"]
    for argv, abs_ in ((["--no_abs"], False), (["--no-abs"], False), (["--abs", "--no-abs"], False)):
        assert parser.parse_args(normalize([*base, *argv], parser, "select")).abs is abs_, argv
    with pytest.raises(SystemExit):  # -h after a switch is help, not the switch's value
        parser.parse_args(normalize([*base, "--abs", "-h"], parser, "select"))
    with pytest.raises(argparse.ArgumentError):  # no abbreviations: --over is not --overwrite
        parser.parse_args(normalize([*base, "--over"], parser, "select"))


def test_group_config_files_come_first_too(tmp_path, capsys):
    (tmp_path / "trainer.yaml").write_text("accelerator: gpu\ndevices: 3\n")
    (tmp_path / "select.yaml").write_text("controls: 2\ntop: 3%\n")
    argv = ["--trainer.accelerator", "cpu", "--trainer", str(tmp_path / "trainer.yaml"), "--select.controls", "7",
            "--select", str(tmp_path / "select.yaml")]  # fmt: skip
    cfg = printed_config(capsys, *argv)
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["trainer"]["devices"] == 3
    assert cfg["select"]["controls"] == 7 and cfg["select"]["top"] == "3%"
    assert "__path__" not in cfg["trainer"] and "__path__" not in cfg["select"]
