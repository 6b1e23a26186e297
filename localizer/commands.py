"""What each ``localizer`` command does with its parsed options (:mod:`localizer.cli` parses them): call the
function of the same name and print its result. Each returns the exit status."""

from __future__ import annotations

from typing import Any


def _arguments(cfg) -> dict[str, Any]:
    """The parsed options as keyword arguments: without ``config`` and the group configs' ``__path__``."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k != "__path__"}
        return value

    kwargs = clean(cfg.as_dict())
    kwargs.pop("config", None)
    return kwargs


def extract_command(cfg) -> int:
    from localizer.recording.extract import extract

    kwargs = _arguments(cfg)
    path = extract(trainer=kwargs.pop("trainer"), **kwargs)
    from localizer.distributed import say

    say(f"wrote {path}")
    return 0


def select_command(cfg) -> int:
    from localizer.report import print_selection
    from localizer.selection.select import select

    kwargs = _arguments(cfg)
    print_selection(select(**kwargs))
    print(f"wrote {cfg.out}")
    return 0


def ablate_command(cfg) -> int:
    from localizer.ablation.ablate import ablate

    kwargs = _arguments(cfg)
    doc = ablate(trainer=kwargs.pop("trainer"), **kwargs)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from localizer.report import print_ablation

    if getattr(rank_zero_only, "rank", 0) == 0:
        print_ablation(doc)
    return 0


def run_command(cfg) -> int:
    from pathlib import Path

    from localizer.jobs import job_name
    from localizer.pipeline import run

    kwargs = _arguments(cfg)
    configs = [str(c) for c in (cfg.get("config") or []) if c is not None]
    if not kwargs.get("name"):  # the job is named by its config (when it is not the stimuli's), stimuli and model
        kwargs["name"] = job_name(kwargs["model"], kwargs["stimuli"], Path(configs[-1]).stem if configs else None)
    run(**kwargs)
    return 0


def check_command(cfg) -> int:
    from localizer.files.check import check

    status = 0
    for report in check(cfg.files):
        if report.problems:
            status = 1
            n = len(report.problems)
            print(
                f"{report.path}: {n} problem{'s' if n > 1 else ''}" + (f" ({report.summary})" if report.summary else "")
            )
            for problem in report.problems:
                print(f"  {report.path}: {problem}")
        else:
            print(f"{report.path}: OK ({report.summary})")
    return status


def pack_command(cfg) -> int:
    from localizer.files.pack import pack

    path = pack(cfg.path, cfg.out, overwrite=cfg.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, one self-contained file)")
    return 0


def dissociate_command(cfg) -> int:
    from localizer.ablation.dissociate import dissociate, print_dissociation

    kwargs = _arguments(cfg)
    doc = dissociate(**kwargs)
    print_dissociation(doc)
    print(f"wrote {kwargs['out']}/dissociation.json and dissociation.png")
    return 0


def compare_command(cfg) -> int:
    from localizer.selection.compare import compare, print_comparison

    print_comparison(compare(cfg.files, cfg.out, overwrite=cfg.overwrite))
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0


COMMANDS = {
    "extract": extract_command,
    "select": select_command,
    "ablate": ablate_command,
    "run": run_command,
    "check": check_command,
    "pack": pack_command,
    "compare": compare_command,
    "dissociate": dissociate_command,
}
