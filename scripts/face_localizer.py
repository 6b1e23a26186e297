"""The face localizer as a Lightning script: a template to copy and adapt.

Record channel-mean activations of a vision model for face vs object images, select the top 1% of channels by Welch t,
then zero them and measure how many predictions change for faces and for objects (the DeepLocalizer agreement
metric), against random channel sets.

    python scripts/face_localizer.py                                         # microsoft/resnet-50 + faces-hub
    python scripts/face_localizer.py --model efficientnet-lite0 --stimuli faces   # offline (models extra)
"""

import argparse
from pathlib import Path

import lightning as L

from localizer.ablation import AblationDataModule, AblationModule, build_conditions, summarize
from localizer.ablation.tasks import make_task
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
    p.add_argument("--model", default="microsoft/resnet-50")
    p.add_argument("--stimuli", default="faces-hub", help="faces (offline), faces-hub, or an image folder")
    p.add_argument("--top", default="1")
    p.add_argument("--controls", type=int, default=5)
    p.add_argument("--out", default="outputs/face_script")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    stimuli = load_stimuli(args.stimuli)
    loaded = load_model(args.model, "image")
    recorder = ActivationRecorder(
        loaded.model, "auto", "channel", modality="image", model_name=loaded.name, model_class=loaded.model_class
    )
    data = LocalizerDataModule(stimuli, loaded.processor, loaded.transform, batch_size=32)
    select = SelectivityCallback(
        out / "selection.h5", SelectionOptions(top=args.top, controls=args.controls), metadata={"stimuli": args.stimuli}
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        logger=False,
        enable_checkpointing=False,
        callbacks=[HDF5ActivationWriter(out / "activations.h5"), select],
    )
    trainer.predict(recorder, datamodule=data, return_predictions=False)
    if trainer.is_global_zero and select.result is not None:
        print_selection(select.result)

    selection = Selection.read(out / "selection.h5")
    conditions = build_conditions(selection, "zero", ["global", "layer_matched", "magnitude_matched"], None)
    held_out = stimuli.filter(lambda s: s == "validation", input_columns="split")
    task = make_task("agreement", held_out, loaded.processor, loaded.transform)
    module = AblationModule(loaded.model, task, conditions, pooling="channel", modality="image")
    trainer.validate(module, datamodule=AblationDataModule(task, held_out, batch_size=32), verbose=False)
    if trainer.is_global_zero:
        print_ablation(summarize(module.results, conditions, "agreement", "zero", selection.n_selected))


if __name__ == "__main__":
    main()
