"""The language localizer as a Lightning script: a template to copy and adapt.

Record last-token activations of every transformer block for sentences vs non-word strings, select the top 1% of
units by Welch t on |activation| (AlKhamissi et al. 2024), then zero them and measure held-out next-token loss
against size-, layer- and magnitude-matched random units.

    python scripts/language_localizer.py                                  # gpt2 from the hub (needs internet)
    python scripts/language_localizer.py --model gemma-3-270m             # offline, from PyPI (models extra)
    python scripts/language_localizer.py --model gemma-3-270m --devices 2 --strategy ddp
"""

import argparse
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from localizer.ablation import AblationDataModule, AblationModule, build_conditions, summarize
from localizer.ablation.tasks import load_task_data, make_task
from localizer.files.writer import HDF5ActivationWriter
from localizer.recording.datamodule import LocalizerDataModule
from localizer.recording.models import load_model
from localizer.recording.recorder import ActivationRecorder
from localizer.recording.stimuli import load_stimuli
from localizer.report import print_ablation, print_selection
from localizer.selection import Selection, SelectionOptions
from localizer.selection.callback import SelectivityCallback


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2", help="hub id, local directory or short name (gemma-3-270m)")
    p.add_argument("--stimuli", default="language", help="built-in set, file or directory")
    p.add_argument("--task-data", default="language-next-token")
    p.add_argument("--top", default="1")
    p.add_argument("--controls", type=int, default=5)
    p.add_argument("--method", default="zero", help="zero | mean | scale=F")
    p.add_argument("--out", default="outputs/language_script")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. stimuli and model
    stimuli = load_stimuli(args.stimuli)
    loaded = load_model(args.model, "text")
    recorder = ActivationRecorder(
        loaded.model, "auto", "last", modality="text", model_name=loaded.name, model_class=loaded.model_class
    )
    data = LocalizerDataModule(stimuli, loaded.processor, batch_size=16)

    # 2. record and select in one pass: the writer streams activations to HDF5, the callback keeps statistics
    options = SelectionOptions(top=args.top, abs=True, controls=args.controls)
    select = SelectivityCallback(out / "selection.h5", options, metadata={"stimuli": args.stimuli})
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        logger=TensorBoardLogger("lightning_logs", name="language_script"),
        enable_checkpointing=False,
        callbacks=[HDF5ActivationWriter(out / "activations.h5"), select],
    )
    trainer.predict(recorder, datamodule=data, return_predictions=False)
    if trainer.is_global_zero and select.result is not None:
        print_selection(select.result)

    # 3. ablate: baseline, localized and every control set in one validation pass
    selection = Selection.read(out / "selection.h5")
    conditions = build_conditions(selection, args.method, ["global", "layer_matched", "magnitude_matched"], None)
    task_data = load_task_data(args.task_data, "next-token")
    task = make_task("next-token", task_data, loaded.processor)
    module = AblationModule(loaded.model, task, conditions, pooling="last", modality="text")
    trainer.validate(module, datamodule=AblationDataModule(task, task_data, batch_size=8), verbose=False)
    if trainer.is_global_zero:
        print_ablation(summarize(module.results, conditions, "next-token", args.method, selection.n_selected))


if __name__ == "__main__":
    main()
