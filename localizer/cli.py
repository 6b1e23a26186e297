"""The ``localizer`` command.

Subcommands parse their options with jsonargparse, in LightningCLI's conventions: ``--config FILE.yaml``,
``--print_config``, and Trainer options as ``--trainer.devices 2 --trainer.strategy ddp``. Mistakes in the input end
with one line on stderr and exit code 2; heavy packages are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import sys

from localizer.errors import LocalizerError, first_line

USAGE = """usage: localizer COMMAND [options]

commands:
  extract   record pooled per-unit activations of a model on positive and control stimuli into one HDF5 file
  select    per-unit selectivity (Welch t, FDR, Cohen's d) from an activation file; pick the network + controls
  ablate    rerun a task with the selected units silenced, against random control sets
  run       extract -> select -> ablate in one command (no arguments: the language localizer on gemma-3-270m)
  check     verify activation / selection files (format, shapes, index coverage, NaN/inf, segment files)

Run `localizer COMMAND --help` for a command's options."""

TRAINER_SKIP = {"callbacks", "logger", "plugins", "profiler", "enable_checkpointing", "default_root_dir",
                "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
                "limit_val_batches", "limit_test_batches", "val_check_interval", "check_val_every_n_epoch",
                "num_sanity_val_steps", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
                "reload_dataloaders_every_n_epochs", "overfit_batches", "log_every_n_steps", "model_registry",
                "detect_anomaly", "barebones", "sync_batchnorm", "use_distributed_sampler", "inference_mode",
                "benchmark", "deterministic", "fast_dev_run", "limit_predict_batches"}


def _extract_parser():
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
    from lightning import Trainer

    p = ArgumentParser(prog="localizer extract", exit_on_error=False, description=(
        "Record pooled per-unit activations of a model on positive and control stimuli into one HDF5 file."))
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    p.add_argument("--model", type=str, required=True,
                   help="short name (gemma-3-270m, minilm-l6, efficientnet-lite0), local save_pretrained dir, hub id, "
                        "or package.module:callable")
    p.add_argument("--stimuli", type=str, required=True,
                   help="built-in set (language, faces, tom, arithmetic), JSONL/CSV/Parquet file, save_to_disk dir, "
                        "image folder (positive/, control/) or hub id")
    p.add_argument("--control", type=str, default=None,
                   help="control stimuli (hub id or path) when --stimuli holds only the positive ones")
    p.add_argument("--layers", type=str, default="auto",
                   help="'auto', module names or glob patterns, comma-separated (e.g. 'transformer.h.*')")
    p.add_argument("--pooling", type=str, default=None,
                   help="last | mean (text; default last), channel | flat | mean (images; default channel)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=32, help="stimuli per forward pass")
    p.add_argument("--out", type=str, required=True, help="the activation file to write (.h5)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False,
                   help="replace an existing --out (and discard a partial extraction into it)")
    p.add_argument("--resume", action=ActionYesNo, default=False,
                   help="continue a killed extraction (also done without this flag when the settings match); "
                        "an error if there is nothing to resume")
    p.add_argument("--segment_mb", "--segment-mb", type=float, default=1024.0,
                   help="commit recorded rows to disk every this many MB per process (what a crash can lose)")
    p.add_argument("--nan_policy", "--nan-policy", type=str, default="error",
                   help="error (stop at the first NaN/inf activation, naming layer and stimulus) | allow (record)")
    p.add_argument("--tokenizer", type=str, default=None, help="tokenizer for a package.module:callable model")
    p.add_argument("--transform", type=str, default=None,
                   help="package.module:callable mapping a PIL image to a [C,H,W] tensor")
    p.add_argument("--padding_side", "--padding-side", type=str, default="right", help="right | left")
    p.add_argument("--max_length", "--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--trust_remote_code", action=ActionYesNo, default=False,
                   help="allow code shipped with a hub model to run")
    p.add_argument("--selection", type=str, default=None,
                   help="also compute the selection online while recording and write it here (options below)")
    _add_selection_arguments(p)
    p.add_class_arguments(Trainer, "trainer", skip=TRAINER_SKIP)
    p.set_defaults({"trainer.accelerator": "auto", "trainer.enable_model_summary": False})
    return p


def _add_selection_arguments(p) -> None:
    from jsonargparse import ActionYesNo

    p.add_argument("--abs", action=ActionYesNo, default=False,
                   help="test |activation| (as AlKhamissi et al.) instead of the signed activation")
    p.add_argument("--alternative", type=str, default="greater", help="greater (positive > control) | two-sided")
    p.add_argument("--top", type=str, default="1%", help="select the top PCT%% of units by t (k = floor(PCT x U / 100))")
    p.add_argument("--per_layer", "--per-layer", action=ActionYesNo, default=False,
                   help="with --top: the top PCT%% of each layer")
    p.add_argument("--count", type=int, default=None, help="select K units instead of a percentage")
    p.add_argument("--fdr", type=float, default=None, help="select units with q < Q and t > 0")
    p.add_argument("--range", type=str, default=None,
                   help="select K random units whose t percentile lies in LOW-HIGH (K from --top or --count)")
    p.add_argument("--bottom", action=ActionYesNo, default=False,
                   help="select the K least selective units, smallest |t| (K from --top or --count)")
    p.add_argument("--controls", type=int, default=10, help="random control sets of each kind")
    p.add_argument("--seed", type=int, default=0, help="seed of the control sets and split halves")
    p.add_argument("--split_half", "--split-half", action=ActionYesNo, default=False,
                   help="also localize on two random halves of the localize rows; report their Dice overlap")


def _selection_options(cfg):
    from localizer.selection import SelectionOptions

    rules = [name for name, on in (("fdr", cfg.fdr is not None), ("range", cfg.range is not None),
                                   ("bottom", cfg.bottom)) if on]
    if len(rules) > 1:
        raise LocalizerError(f"choose one of --fdr, --range, --bottom (got {', '.join(rules)})")
    if cfg.fdr is not None and cfg.count is not None:
        raise LocalizerError("--count does not apply to --fdr (it selects every unit with q < Q and t > 0)")
    if cfg.per_layer and (rules or cfg.count is not None):
        raise LocalizerError("--per-layer works with --top only")
    return SelectionOptions(rule=rules[0] if rules else "top", top=cfg.top, count=cfg.count, per_layer=cfg.per_layer,
                            fdr=cfg.fdr, range=cfg.range, abs=cfg.abs, alternative=cfg.alternative,
                            controls=cfg.controls, seed=cfg.seed, split_half=cfg.split_half)


def _select_parser():
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    p = ArgumentParser(prog="localizer select", exit_on_error=False, description=(
        "Per-unit selectivity (Welch t, p, BH-FDR q, Cohen's d) of positive vs control stimuli from an activation "
        "file; select the network and matched random controls; write a selection file."))
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    p.add_argument("--activations", type=str, required=True, help="activation file written by localizer extract")
    p.add_argument("--out", type=str, required=True, help="the selection file to write (.h5)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing --out")
    p.add_argument("--log_dir", "--log-dir", type=str, default="lightning_logs", help="TensorBoard folder")
    _add_selection_arguments(p)
    return p


def _select(argv: list[str]) -> int:
    cfg = _parse(_select_parser(), argv)
    options = _selection_options(cfg)
    from pathlib import Path

    from localizer.extract import check_output
    from localizer.report import print_selection
    from localizer.selectivity import select_from_file

    check_output(Path(cfg.out), cfg.overwrite)
    result = select_from_file(cfg.activations, cfg.out, options, log_dir=cfg.log_dir)
    print_selection(result)
    print(f"wrote {cfg.out}")
    return 0


def _extract(argv: list[str]) -> int:
    parser = _extract_parser()
    cfg = _parse(parser, argv)
    from localizer.extract import extract

    trainer = cfg.trainer.as_dict()
    selection = None
    if cfg.selection:
        selection = (cfg.selection, _selection_options(cfg))
    path = extract(cfg.model, cfg.stimuli, cfg.out, layers=cfg.layers, pooling=cfg.pooling,
                   batch_size=cfg.batch_size, control=cfg.control, tokenizer=cfg.tokenizer, transform=cfg.transform,
                   padding_side=cfg.padding_side, max_length=cfg.max_length, num_workers=cfg.num_workers,
                   overwrite=cfg.overwrite, trust_remote_code=cfg.trust_remote_code, trainer=trainer,
                   selection=selection, resume=cfg.resume, segment_mb=cfg.segment_mb, nan_policy=cfg.nan_policy)
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(f"wrote {path}")
    return 0


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except Exception as e:  # jsonargparse raises ArgumentError (and others) with exit_on_error=False
        raise LocalizerError(" ".join(first_line(e).split())) from e


def _ablate_parser():
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
    from lightning import Trainer

    p = ArgumentParser(prog="localizer ablate", exit_on_error=False, description=(
        "Rerun a task with the selected units silenced and report metric deltas against random control sets."))
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    p.add_argument("--selection", type=str, required=True, help="selection file from localizer select")
    p.add_argument("--task", type=str, required=True, help="classification | next-token | minimal-pairs | agreement")
    p.add_argument("--model", type=str, default=None, help="the model (default: the one in the selection file)")
    p.add_argument("--task_data", "--task-data", type=str, default=None,
                   help="task data file/dir (default: the validation rows of the recorded stimuli)")
    p.add_argument("--method", type=str, default="zero", help="zero | mean | scale=F")
    p.add_argument("--controls", type=str, default="all", help="all, or control kinds, comma-separated")
    p.add_argument("--n_controls", "--n-controls", type=int, default=None, help="use the first N sets of each kind")
    p.add_argument("--sweep", type=str, default=None, help="top-%% values to re-select and evaluate, e.g. 0.5,1,2")
    p.add_argument("--out", type=str, default=None, help="write the results document (JSON) here")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing --out")
    p.add_argument("--batch_size", "--batch-size", type=int, default=16, help="task rows per batch")
    p.add_argument("--max_length", "--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--log_dir", "--log-dir", type=str, default="lightning_logs", help="TensorBoard folder")
    p.add_argument("--trust_remote_code", action=ActionYesNo, default=False,
                   help="allow code shipped with a hub model to run")
    p.add_class_arguments(Trainer, "trainer", skip=TRAINER_SKIP)
    p.set_defaults({"trainer.accelerator": "auto", "trainer.enable_model_summary": False})
    return p


def _ablate(argv: list[str]) -> int:
    cfg = _parse(_ablate_parser(), argv)
    from pathlib import Path

    from localizer.ablation import run_ablation
    from localizer.extract import check_output
    from localizer.report import print_ablation

    if cfg.out:
        check_output(Path(cfg.out), cfg.overwrite)
    doc = run_ablation(cfg.selection, cfg.task, model=cfg.model, task_data=cfg.task_data, method=cfg.method,
                       controls=cfg.controls, n_controls=cfg.n_controls, sweep=cfg.sweep, out=cfg.out,
                       batch_size=cfg.batch_size, max_length=cfg.max_length, log_dir=cfg.log_dir,
                       trust_remote_code=cfg.trust_remote_code, trainer=cfg.trainer.as_dict())
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print_ablation(doc)
    return 0


def _run_parser():
    from typing import Optional

    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning import Trainer

    p = ArgumentParser(prog="localizer run", exit_on_error=False, description=(
        "Extract -> select -> ablate in one command. With no arguments: the language localizer on gemma-3-270m "
        "(configs: language, faces; or any YAML file)."))
    p.add_argument("--config", action=ActionConfigFile,
                   help="a YAML file, or a shipped config by name: language | faces")
    p.add_argument("--model", type=str, default="gemma-3-270m")
    p.add_argument("--stimuli", type=str, default="language")
    p.add_argument("--layers", type=str, default="auto")
    p.add_argument("--pooling", type=Optional[str], default="last")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_length", type=Optional[int], default=None)
    p.add_argument("--output_dir", type=str, default="outputs/language-gemma-3-270m")
    p.add_argument("--untrained", type=bool, default=False,
                   help="also run on a randomly initialized copy of the model (a baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained copy's random initialization")
    p.add_argument("--log_dir", type=str, default="lightning_logs")
    p.add_argument("--select.top", type=str, default="1%")
    p.add_argument("--select.abs", type=bool, default=True)
    p.add_argument("--select.alternative", type=str, default="greater")
    p.add_argument("--select.per_layer", type=bool, default=False)
    p.add_argument("--select.count", type=Optional[int], default=None)
    p.add_argument("--select.controls", type=int, default=5)
    p.add_argument("--select.seed", type=int, default=0)
    p.add_argument("--select.split_half", type=bool, default=False)
    p.add_argument("--ablate.method", type=str, default="zero")
    p.add_argument("--ablate.batch_size", type=int, default=8)
    p.add_argument("--ablate.n_controls", type=Optional[int], default=None)
    p.add_argument("--ablate.sweep", type=Optional[str], default=None)
    p.add_argument("--ablate.tasks", type=list[dict[str, Optional[str]]],
                   default=[{"task": "next-token", "data": "language-next-token"},
                            {"task": "minimal-pairs", "data": "language-minimal-pairs"}])
    p.add_class_arguments(Trainer, "trainer", skip=TRAINER_SKIP)
    p.set_defaults({"trainer.accelerator": "auto", "trainer.devices": 1, "trainer.enable_model_summary": False})
    return p


def _run(argv: list[str]) -> int:
    from localizer.run import config_path

    argv = [config_path(a) if i and argv[i - 1] == "--config" else a for i, a in enumerate(argv)]
    cfg = _parse(_run_parser(), argv).as_dict()
    from localizer.run import run

    cfg.pop("config", None)
    run(**cfg)
    return 0


def _check(argv: list[str]) -> int:
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="localizer check", exit_on_error=False, description=(
        "Verify activation and selection files: format version, shapes, /index = 0..N-1 with no gap or duplicate, "
        "no NaN/inf, every segment file present, complete and mapped to its own stimuli. Exit status: 0 all files "
        "OK, 1 a problem was found (one line each), 2 bad usage."))
    p.add_argument("files", type=str, nargs="+", help="activation or selection files (.h5)")
    cfg = _parse(p, argv)
    from localizer.integrity import check_file

    status = 0
    for path in cfg.files:
        kind, summary, problems = check_file(path)
        if problems:
            status = 1
            print(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
                  + (f" ({summary})" if summary else ""))
            for problem in problems:
                print(f"  {path}: {problem}")
        else:
            print(f"{path}: OK ({summary})")
    return status


COMMANDS = {"extract": _extract, "select": _select, "ablate": _ablate, "run": _run, "check": _check}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"localizer: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except LocalizerError as e:
        print(f"localizer {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system or a damaged file, not a bug: one line, like any input error
        print(f"localizer {argv[0]}: error: {' '.join(first_line(e).split())}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --print_config end the parse with SystemExit(0)
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"localizer {argv[0]}: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Destroy a process group left by a DDP run: its threads otherwise abort the interpreter at exit now and then
    ("terminate called without an active exception", exit code 134, seen in about 1 of 6 runs)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
