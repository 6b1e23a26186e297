"""Record activations with the Lightning pieces directly — the same job as `localizer extract`, step by step.

    .venv/bin/python scripts/record_with_trainer.py --model minilm-l6 \
        --stimuli localizer/resources/example_language.jsonl --out outputs/example_trainer.h5 [--devices 2]
"""

import argparse

import h5py
import lightning as L

from localizer import ActivationRecorder, HDF5ActivationWriter, LocalizerDataModule, load_model, load_stimuli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--stimuli", default="localizer/resources/example_language.jsonl")
    parser.add_argument("--out", default="outputs/example_trainer.h5")
    parser.add_argument("--layers", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()

    # 1. the stimuli: a datasets.Dataset with text/image, positive (bool) and optional split columns
    stimuli = load_stimuli(args.stimuli)
    # 2. the model and the tokenizer/image processor for its inputs
    loaded = load_model(args.model, "text" if "text" in stimuli.column_names else "image")
    # 3. a LightningModule whose predict_step returns {layer: [B, U_layer]} pooled activations
    recorder = ActivationRecorder(
        loaded.model,
        args.layers,
        modality="text" if "text" in stimuli.column_names else "image",
        model_name=loaded.name,
        model_class=loaded.model_class,
    )
    # 4. batches that carry their dataset indices, so every rank's rows land in the right place
    data = LocalizerDataModule(stimuli, loaded.processor, loaded.transform, batch_size=16)
    # 5. a prediction writer that streams each batch to this rank's shard; rank 0 writes the master at the end
    writer = HDF5ActivationWriter(args.out)
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        callbacks=[writer],
    )
    trainer.predict(recorder, datamodule=data, return_predictions=False)

    if trainer.is_global_zero:
        with h5py.File(args.out) as f:
            for layer in recorder.layers:
                print(layer, f["activations"][layer].shape)


if __name__ == "__main__":
    main()
