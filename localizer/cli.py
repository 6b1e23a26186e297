"""The ``localizer`` command, generated from the signatures of the Python API.

Every subcommand's options come from one function (:func:`localizer.extract`, :func:`localizer.select`,
:func:`localizer.ablate`, :func:`localizer.run`, :func:`localizer.check`) through jsonargparse, with the function's
defaults and its docstring as help, in LightningCLI's conventions: ``--config FILE.yaml``, ``--print_config``,
``--trainer.devices 2``. Underscores are canonical; every option also accepts dashes (``--batch-size``), and a
switch takes no value or ``true``/``false``. Command-line values always win over a ``--config`` (configs are
applied first, wherever they stand). Building a parser imports neither torch nor Lightning; mistakes end with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from typing import Any, Optional

from localizer.errors import LocalizerError, first_line, speak_options

USAGE = """usage: localizer COMMAND [options]

commands:
  extract   record pooled per-unit activations of a model on positive and control stimuli into one HDF5 file
  select    per-unit selectivity (Welch t, FDR, Cohen's d) from an activation file; pick the network + controls
  ablate    rerun a task with the selected units silenced, against random control sets
  run       extract -> select -> ablate in one command (no arguments: the language localizer on gemma-3-270m)
  check     verify activation / selection files (format, shapes, index coverage, NaN/inf, segment files)
  pack      make an activation file of layout virtual one self-contained file
  compare   overlap of selected networks: Dice, chance Dice, hypergeometric p (in total and per layer)
  dissociate  localize language / tom / arithmetic networks and ablate each on every network's task

Run `localizer COMMAND --help` for a command's options. Every command takes --verbose: also show Lightning's
info lines, library progress bars and known library warnings (hidden by default)."""

SPELLING = (
    "Options are written with underscores (--batch_size) or dashes (--batch-size); a switch takes no value "
    "or true/false (--abs, --abs false). Values on the command line win over --config files."
)
# the parts of a step's parameters that `localizer run` decides itself
RUN_SKIPS_SELECT = {"activations", "out", "overwrite", "log_dir"}
RUN_SKIPS_ABLATE = {
    "selection",
    "task",
    "model",
    "task_data",
    "out",
    "overwrite",
    "log_dir",
    "trust_remote_code",
    "dtype",
    "device_map",
    "max_memory",
    "trainer",
}
TASKS_HELP = (
    "ablation tasks, a list of {task: next-token | minimal-pairs | classification | agreement, data: task "
    "data or null for the validation rows of the stimuli}; empty: no ablation"
)


def _description(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split()) + "\n\n" + SPELLING


def _new_parser(command: str, fn: Callable, config_help: str = "a YAML file with any of these options"):
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(
        prog=f"localizer {command}", exit_on_error=False, allow_abbrev=False, description=_description(fn)
    )
    p.add_argument("--config", action=ActionConfigFile, help=config_help)
    return p


def _add_trainer(p) -> None:
    from localizer.trainer import TrainerOptions

    p.add_class_arguments(TrainerOptions, "trainer", help="Lightning Trainer options")


def build_parser(command: str):
    """The jsonargparse parser of one subcommand (no torch or Lightning import)."""
    if command == "extract":
        from localizer.recording.extract import extract

        p = _new_parser(command, extract)
        p.add_function_arguments(extract, skip={"trainer"}, as_group=False)
        _add_trainer(p)
    elif command == "select":
        from localizer.selection.select import select

        p = _new_parser(command, select)
        p.add_function_arguments(select, as_group=False)
    elif command == "ablate":
        from localizer.ablation.ablate import ablate

        p = _new_parser(command, ablate)
        p.add_function_arguments(ablate, skip={"trainer"}, as_group=False)
        _add_trainer(p)
    elif command == "run":
        import yaml

        from localizer.ablation.ablate import ablate
        from localizer.pipeline import NOT_FROM_EXTRACT, SELECT_OPTIONS, run
        from localizer.recording.extract import extract, record
        from localizer.resources import read_text
        from localizer.selection.select import select

        p = _new_parser(
            command,
            run,
            "a YAML file, or a shipped config by name: language (the default) | faces | alkhamissi2024 | deeplocalizer",
        )
        # run's **options (overwrite is run's own)
        forwarded = set(inspect.signature(record).parameters) - {"model", "stimuli", "log_dir", "overwrite"}
        p.add_function_arguments(run, skip={"select", "ablate", "trainer"} | forwarded, as_group=False)
        p.add_function_arguments(extract, skip=NOT_FROM_EXTRACT | set(SELECT_OPTIONS), as_group=False)
        p.add_function_arguments(select, "select", skip=RUN_SKIPS_SELECT)
        p.add_function_arguments(ablate, "ablate", skip=RUN_SKIPS_ABLATE)
        p.add_argument("--ablate.tasks", type=list[dict[str, Optional[str]]], default=[], help=TASKS_HELP)
        _add_trainer(p)
        p.set_defaults(_flat(yaml.safe_load(read_text("configs/language.yaml"))))  # run = the language job
        for action in option_actions(p).values():
            action.required = False  # model, stimuli, output_dir have the language job's values
    elif command == "check":
        from jsonargparse import ArgumentParser

        from localizer.files.check import check

        p = ArgumentParser(
            prog="localizer check",
            exit_on_error=False,
            description=(
                _description(check).split("\n\n")[0] + " Exit status: 0 all files OK, 1 a problem was found (one line "
                "each), 2 bad usage."
            ),
        )
        p.add_argument("files", type=str, nargs="+", help="activation or selection files (.h5)")
    elif command == "dissociate":
        from localizer.ablation.ablate import ablate
        from localizer.ablation.dissociate import dissociate
        from localizer.selection.select import select

        p = _new_parser(command, dissociate)
        p.add_function_arguments(dissociate, skip={"select", "ablate", "trainer"}, as_group=False)
        p.add_function_arguments(select, "select", skip=RUN_SKIPS_SELECT)
        p.add_function_arguments(ablate, "ablate", skip=(RUN_SKIPS_ABLATE - {"max_length"}) | {"sweep"})
        _add_trainer(p)
    elif command == "compare":
        from localizer.selection.compare import compare

        p = _new_parser(command, compare)
        p.add_argument("files", type=str, nargs="+", help="two or more selection files (.h5)")
        p.add_argument("--out", type=Optional[str], default=None, help="also write the result as JSON here")
        p.add_argument("--overwrite", type=bool, default=False, help="replace an existing --out")
    elif command == "pack":
        from localizer.files.pack import pack

        p = _new_parser(command, pack)
        p.add_argument("path", type=str, help="the activation file (.h5) to pack")
        p.add_argument(
            "--out", type=Optional[str], default=None, help="write the packed copy here (keeps the original)"
        )
        p.add_argument("--overwrite", type=bool, default=False, help="replace an existing --out")
    else:
        raise KeyError(command)
    return p


# --- argv before parsing ------------------------------------------------------------------------------------------


def option_actions(parser) -> dict[str, Any]:
    """``{"--name": action}`` for every option string of ``parser`` (nested ``--select.top`` included)."""
    return {s: a for s, a in parser._option_string_actions.items() if s.startswith("--")}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"select": {"abs": True}}`` → ``{"select.abs": True}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_config(action) -> bool:
    """``--config`` and the group configs jsonargparse adds (``--trainer FILE``, ``--select FILE``)."""
    return type(action).__name__ in ("ActionConfigFile", "_ActionConfigLoad")


def _is_switch(action) -> bool:
    hint = getattr(action, "_typehint", None)
    return hint is bool or hint == Optional[bool]


def normalize(argv: list[str], parser, command: str) -> list[str]:
    """The command line as the parser takes it: canonical underscores for dashed option names, ``--no_X`` as
    ``--X false``, ``true`` after a bare switch, and every config file (``--config``, ``--trainer FILE``, ...) first,
    so that values given on the command line win; ``run`` resolves shipped config names (``faces``)."""
    import os

    from localizer.resources import config_path

    actions = option_actions(parser)
    tokens: list[str] = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            canonical = "--" + name[2:].replace("-", "_")
            negated = "--" + canonical[len("--no_") :] if canonical.startswith("--no_") else None
            if name not in actions and canonical in actions:
                token = canonical + eq + value
            elif name not in actions and negated in actions and _is_switch(actions[negated]) and not eq:
                tokens += [negated, "false"]
                continue
        tokens.append(token)
    configs: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        action = actions.get(name)
        if action is not None and _is_config(action) and (eq or i + 1 < len(tokens)):
            value = value if eq else tokens[i + 1]
            if command == "run" and name == "--config" and not os.path.exists(value):
                value = config_path(value) or value
            configs += [name, value]
            i += 1 if eq else 2
            continue
        rest.append(tokens[i])
        i += 1
    argv = configs + rest
    with_values: list[str] = []
    for i, token in enumerate(argv):
        with_values.append(token)
        action = actions.get(token)
        if action is not None and _is_switch(action):
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.startswith("-"):
                with_values.append("true")
    return with_values


def _parse(parser, argv: list[str]):
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise
    except Exception as e:  # jsonargparse raises ArgumentError (and others) with exit_on_error=False
        raise LocalizerError(explain(str(e))) from e


def explain(message: str) -> str:
    """A jsonargparse error as one line naming the option, the value and what was expected."""
    key = re.search(r'(?:Parser key|Key) "([^"]+)"', message)
    if key and "is required" in message:
        return f"option --{key.group(1)} is required"
    if key and key.group(1) == "config":
        detail = " ".join(re.sub(r'^\s*Parser key "config":', "", message).split())
        return f"option --config: {detail}"
    if message.startswith("Unexpected config"):
        return f"option --config: not a YAML mapping of options ({' '.join(message.split())})"
    if key:
        value = re.search(r"(?:Got value|Given value): (.*)", message)
        literal = re.search(r"Literal\[(.*?)\]", message)
        got = repr(value.group(1).strip()) if value else "this value"
        if literal:
            choices = ", ".join(c.strip().strip("'\"") for c in literal.group(1).split(","))
            return f"option --{key.group(1)}: {got} is not one of {choices}"
        types = [t for t in re.findall(r"Expected a <class '(\w+)'>", message) if t != "NoneType"]
        expected = " or ".join(dict.fromkeys(types)) or "another type"
        return f"option --{key.group(1)}: expected {expected}, got {got}"
    missing = re.match(r"the following arguments are required: (.*)", message)
    if missing:
        names = [n.strip() for n in missing.group(1).split(",")]
        if names == ["files"]:  # localizer check's positional argument
            return "give at least one file"
        return "missing required option" + ("s " if len(names) > 1 else " ") + ", ".join(f"--{n}" for n in names)
    unknown = re.match(r"Option '([^']+)' is not accepted", message)
    if unknown:
        return f"unknown option {unknown.group(1)!r} (in a --config file or on the command line); see --help"
    return " ".join(first_line(Exception(message)).split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from localizer.commands import COMMANDS

    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"localizer: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from localizer.quiet import quiet

    verbose = "--verbose" in argv[1:]
    argv = [argv[0], *(a for a in argv[1:] if a != "--verbose")]
    quiet(verbose)
    speak_options()
    try:
        parser = build_parser(argv[0])
        cfg = _parse(parser, normalize(argv[1:], parser, argv[0]))
        return command(cfg)
    except LocalizerError as e:
        _say(f"localizer {argv[0]}: error: {e}")
        return 2
    except OSError as e:  # the file system or a damaged file, not a bug: one line, like any input error
        _say(f"localizer {argv[0]}: error: {' '.join(first_line(e).split())}")
        return 2
    except SystemExit as e:  # --help and --print_config end the parse with SystemExit(0)
        if isinstance(e.__context__, KeyboardInterrupt):  # Lightning turns Ctrl-C into exit(1)
            return _interrupted(argv[0])
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return _interrupted(argv[0])
    finally:
        speak_options(False)  # a Python caller of main() gets parameter names in later library errors again
        _end_distributed()


def _say(line: str) -> None:
    """One line on stderr in one write: the ranks of a DDP job share stderr, and their lines must not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _interrupted(command: str) -> int:
    resume = " (committed segments are kept: rerun the same command to resume)" if command in ("extract", "run") else ""
    _say(f"localizer {command}: interrupted{resume}")
    return 130


def _end_distributed() -> None:
    """Destroy a process group left by a DDP run: its threads otherwise abort the interpreter at exit now and then
    ("terminate called without an active exception", exit code 134, seen in about 1 of 6 runs)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
