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
                   help="short name (minilm-l6), local save_pretrained dir, hub id, or package.module:callable")
    p.add_argument("--stimuli", type=str, required=True,
                   help="JSONL/CSV/Parquet file, save_to_disk dir, image folder (positive/, control/) or hub id")
    p.add_argument("--control", type=str, default=None,
                   help="control stimuli (hub id or path) when --stimuli holds only the positive ones")
    p.add_argument("--layers", type=str, default="auto",
                   help="'auto', module names or glob patterns, comma-separated (e.g. 'transformer.h.*')")
    p.add_argument("--pooling", type=str, default=None,
                   help="last | mean (text; default last), channel | flat | mean (images; default channel)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=32, help="stimuli per forward pass")
    p.add_argument("--out", type=str, required=True, help="the activation file to write (.h5)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing --out")
    p.add_argument("--tokenizer", type=str, default=None, help="tokenizer for a package.module:callable model")
    p.add_argument("--transform", type=str, default=None,
                   help="package.module:callable mapping a PIL image to a [C,H,W] tensor")
    p.add_argument("--padding_side", "--padding-side", type=str, default="right", help="right | left")
    p.add_argument("--max_length", "--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--trust_remote_code", action=ActionYesNo, default=False,
                   help="allow code shipped with a hub model to run")
    p.add_class_arguments(Trainer, "trainer", skip=TRAINER_SKIP)
    p.set_defaults({"trainer.accelerator": "auto", "trainer.enable_model_summary": False})
    return p


def _extract(argv: list[str]) -> int:
    parser = _extract_parser()
    cfg = _parse(parser, argv)
    from localizer.extract import extract

    trainer = {k: v for k, v in cfg.trainer.as_dict().items()}
    path = extract(cfg.model, cfg.stimuli, cfg.out, layers=cfg.layers, pooling=cfg.pooling,
                   batch_size=cfg.batch_size, control=cfg.control, tokenizer=cfg.tokenizer, transform=cfg.transform,
                   padding_side=cfg.padding_side, max_length=cfg.max_length, num_workers=cfg.num_workers,
                   overwrite=cfg.overwrite, trust_remote_code=cfg.trust_remote_code, trainer=trainer)
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(f"wrote {path}")
    return 0


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except Exception as e:  # jsonargparse raises ArgumentError (and others) with exit_on_error=False
        raise LocalizerError(" ".join(first_line(e).split())) from e


COMMANDS = {"extract": _extract}


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
    except KeyboardInterrupt:
        print(f"localizer {argv[0]}: interrupted", file=sys.stderr)
        return 130
