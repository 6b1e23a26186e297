"""Built-in stimulus sets and task data, by name (seeded and reproducible; no network except ``faces-hub``).

===========================  ==================================================================================
name                         contents
===========================  ==================================================================================
``language``                 247 English sentences (8-14 words, written for this project) vs 247 pronounceable
                             non-word strings (checked against wordfreq), matched in token length to their sentence
                             for the model's tokenizer (:func:`match_token_lengths`); 75/25 localize/validation
``language-word-matched``    the same, each non-word string with as many words as its sentence (not token-matched:
                             pseudowords split into more sub-word tokens than words, ~2x the tokens)
``language-next-token``      50 held-out sentences (task data for ``next-token``)
``language-minimal-pairs``   113 grammatical/ungrammatical pairs (task data for ``minimal-pairs``)
``faces``                    LFW faces vs non-face patches from scikit-image's ``lfw_subset`` (25x25 gray), plus
                             crops of scikit-image's object and scene photos as controls
``faces-hub``                CelebA (``tpremoli/CelebA-attrs``) vs COCO (``phiyodr/coco2017``), needs internet
``tom``                      false-belief vs false-photograph stories (theory of mind), templates, seeded; the
                             same number of tokens in each pair; ``mean`` pooling by default (as llm-localization)
``arithmetic``               hard (two-digit x two-digit) vs easy (tens + tens) arithmetic prompts, seeded; the same
                             number of tokens in each pair; ``mean`` pooling by default (as llm-localization)
``tom-forced-choice``        48 held-out false-belief stories, each completed with the location the character
                             believes (good) and the true one (bad): task data for ``minimal-pairs``
``arithmetic-forced-choice`` 60 held-out two-digit additions completed with the right and a wrong sum (off by 1-9)
===========================  ==================================================================================
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from localizer.errors import LocalizerError
from localizer.resources import read_text, resource_path


def _jsonl(name: str):
    import datasets

    with resource_path(name) as path:
        return datasets.load_dataset("json", data_files=str(path), split="train")


def _split(n: int, frac: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    idx = list(range(n))
    rng.shuffle(idx)
    val = set(idx[: round(n * frac)])
    return ["validation" if i in val else "localize" for i in range(n)]


def language():
    """The ``language`` set before matching (:func:`match_token_lengths` matches it to a tokenizer)."""
    return _jsonl("language.jsonl").select_columns(["text", "positive", "split"])


def _spans(text: str) -> list[str]:
    """Every run of >= 2 consecutive words of a non-word string, as a string of its own, longest first."""
    end = "." if text.endswith(".") else ""
    words = text.removesuffix(".").split()
    runs = [" ".join(words[i : i + k]) for k in range(len(words), 1, -1) for i in range(len(words) - k + 1)]
    return [(r[0].upper() + r[1:] if text[0].isupper() else r) + end for r in runs]


def match_token_lengths(ds, tokenizer):
    """The ``language`` set with each non-word string replaced by the run of its consecutive pseudowords whose token
    count under ``tokenizer`` (special tokens included) is closest to its sentence's; ties go to the longer run, then
    the earlier. Pseudowords split into more sub-word tokens than words, so a matched string has fewer words than its
    sentence (about 5 for 12 tokens). Rows alternate sentence, non-word string, as in ``language.jsonl``."""
    from localizer.recording.datamodule import token_lengths

    texts = ds["text"][:]
    out = list(texts)
    candidates = [_spans(t) for t in texts[1::2]]
    lengths = token_lengths([c for cs in candidates for c in cs], tokenizer, None)
    targets = token_lengths(texts[0::2], tokenizer, None)
    at = 0
    for i, (cs, target) in enumerate(zip(candidates, targets)):
        gaps = [abs(n - target) for n in lengths[at : at + len(cs)]]
        out[2 * i + 1] = cs[gaps.index(min(gaps))]
        at += len(cs)
    return ds.remove_columns("text").add_column("text", out).select_columns(ds.column_names)


POOLING = {"tom": "mean", "arithmetic": "mean"}  # as llm-localization localizes its ToM and MD networks


def for_model(name: str | None, ds, tokenizer):
    """A built-in set as recorded for a model: ``language`` matched to its tokenizer; anything else unchanged."""
    if name == "language" and tokenizer is not None:
        return match_token_lengths(ds, tokenizer)
    return ds


def language_next_token():
    import datasets

    lines = [s.strip() for s in read_text("next_token.txt").splitlines() if s.strip()]
    return datasets.Dataset.from_dict({"text": lines})


def language_minimal_pairs():
    return _jsonl("minimal_pairs.jsonl")


NAMES_TOM = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Lena", "Max"]
OBJECTS_TOM = ["chocolate", "ball", "book", "key", "letter", "ring", "hat", "phone", "apple", "coin"]
PLACES_TOM = ["basket", "drawer", "box", "cupboard", "bag", "closet", "desk", "fridge", "shelf", "car"]


def _false_belief(a: str, b: str, obj: str, p1: str, p2: str) -> str:
    return (
        f"{a} puts the {obj} in the {p1} and leaves the room. While {a} is outside, {b} moves the {obj} "
        f"to the {p2}. When {a} comes back, {a} thinks that the {obj} is in the"
    )


def tom(seed: int = 0, n: int = 48):
    """False-belief stories (positive) vs false-photograph stories (control), matched in structure and length."""
    import datasets

    rng = random.Random(seed)
    names, objects, places = NAMES_TOM, OBJECTS_TOM, PLACES_TOM
    rows = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        obj = rng.choice(objects)
        p1, p2 = rng.sample(places, 2)
        belief = _false_belief(a, b, obj, p1, p2)
        photo = (  # the same names, objects and places as often as the belief story: the same token count
            f"{a} takes a photo of the {obj} in the {p1} and {a} leaves. While {a} is outside, {b} moves the {obj} "
            f"to the {p2}. In the photo {a} took, the {obj} is in the"
        )
        rows += [{"text": belief, "positive": True}, {"text": photo, "positive": False}]
    split = _split(n, 0.25, seed)
    for i, r in enumerate(rows):
        r["split"] = split[i // 2]
    return datasets.Dataset.from_list(rows)


def arithmetic(seed: int = 0, n: int = 80):
    """Hard (two-digit x two-digit, no multiple of 10) vs easy (tens + tens) arithmetic prompts (multiple-demand
    localizer); both with two-digit numbers, so a pair has the same number of tokens; every prompt distinct (there
    are 81 sums of tens, so n <= 81)."""
    import datasets

    rng = random.Random(seed)
    easy = rng.sample([(c, d) for c in range(10, 100, 10) for d in range(10, 100, 10)], n)
    two_digit = [a for a in range(12, 99) if a % 10]
    hard = rng.sample([(a, b) for a in two_digit for b in two_digit], n)
    rows = []
    for (a, b), (c, d) in zip(hard, easy):
        rows += [
            {"text": f"What is {a} times {b}? The answer is", "positive": True},
            {"text": f"What is {c} plus {d}? The answer is", "positive": False},
        ]
    split = _split(n, 0.25, seed)
    for i, r in enumerate(rows):
        r["split"] = split[i // 2]
    return datasets.Dataset.from_list(rows)


def tom_forced_choice(seed: int = 1, n: int = 48):
    """False-belief stories not among the ``tom`` localizer's, each completed with the believed location (good) and
    the true one (bad): a theory-of-mind task for ``minimal-pairs``."""
    import datasets

    seen = set(tom()["text"])
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        a, b = rng.sample(NAMES_TOM, 2)
        obj = rng.choice(OBJECTS_TOM)
        p1, p2 = rng.sample(PLACES_TOM, 2)
        story = _false_belief(a, b, obj, p1, p2)
        if story in seen:
            continue
        seen.add(story)
        rows.append({"good": f"{story} {p1}.", "bad": f"{story} {p2}."})
    return datasets.Dataset.from_list(rows)


def arithmetic_forced_choice(seed: int = 1, n: int = 60):
    """Two-digit additions (a prompt format unlike the ``arithmetic`` localizer's) completed with the right sum (good)
    and a wrong one, off by 1 to 9 (bad): an arithmetic task for ``minimal-pairs``."""
    import datasets

    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10, 50) for b in range(10, 50)], n)
    rows = []
    for a, b in pairs:
        wrong = a + b + rng.choice([-1, 1]) * rng.randint(1, 9)
        rows.append({"good": f"{a} + {b} = {a + b}", "bad": f"{a} + {b} = {wrong}"})
    return datasets.Dataset.from_list(rows)


def _object_photos():
    """Full-size object/scene photos shipped with scikit-image (no faces, no people)."""
    from PIL import Image

    photos = []
    try:
        from skimage import data as sk

        for name in (
            "chelsea",
            "coffee",
            "rocket",
            "hubble_deep_field",
            "coins",
            "immunohistochemistry",
            "moon",
            "page",
            "horse",
            "brick",
            "grass",
            "gravel",
            "cell",
            "colorwheel",
        ):
            try:
                photos.append(Image.fromarray(getattr(sk, name)()))
            except Exception:  # a photo missing from this scikit-image version (or needing a download)
                continue
    except ImportError:
        pass
    return photos


def faces(seed: int = 0):
    """100 LFW faces (positive) vs 100 LFW non-face patches + object-photo crops (control), 25% validation."""
    import datasets
    import numpy as np
    from PIL import Image

    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise LocalizerError("stimuli 'faces' need scikit-image: pip install 'localizer[models]'") from None
    arr = lfw_subset()  # [200, 25, 25] float in [0, 1]: 100 faces then 100 non-faces
    to_img = [Image.fromarray((a * 255).astype(np.uint8), mode="L") for a in arr]
    rng = np.random.default_rng(seed)
    crops = []
    for photo in _object_photos():
        w, h = photo.size
        for _ in range(4):
            s = int(rng.integers(min(w, h) // 4, min(w, h) // 2 + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            crops.append(photo.crop((x, y, x + s, y + s)).convert("L").resize((25, 25)))
    images = to_img + crops
    positive = [True] * 100 + [False] * (100 + len(crops))
    split = _split(len(images), 0.25, seed)
    features = datasets.Features(
        {"image": datasets.Image(), "positive": datasets.Value("bool"), "split": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict({"image": images, "positive": positive, "split": split}, features=features)


def faces_hub(ds, seed: int = 0, n: int = 500):
    """The first ``n`` CelebA faces and ``n`` COCO images of ``ds`` (the two hub sets read as one stimulus set by
    :func:`localizer.recording.stimuli.load_stimuli`, see :data:`HUB_PAIRS`), 25% validation."""
    pos = [i for i, p in enumerate(ds["positive"]) if p][:n]
    ctl = [i for i, p in enumerate(ds["positive"]) if not p][:n]
    ds = ds.select(pos + ctl)
    return ds.add_column("split", _split(len(ds), 0.25, seed)) if "split" not in ds.column_names else ds


BUILTIN = {
    "language": language,
    "language-word-matched": language,
    "language-next-token": language_next_token,
    "language-minimal-pairs": language_minimal_pairs,
    "faces": faces,
    "tom": tom,
    "arithmetic": arithmetic,
    "tom-forced-choice": tom_forced_choice,
    "arithmetic-forced-choice": arithmetic_forced_choice,
}

# built-in sets read from two hub datasets (positive, control; needs internet), then finished by a function
HUB_PAIRS = {"faces-hub": (("tpremoli/CelebA-attrs", "phiyodr/coco2017"), faces_hub)}
NAMES = (*BUILTIN, *HUB_PAIRS)


def builtin_name(source) -> str | None:
    """``source`` when it names a built-in set (and no local path of that name exists), else None."""
    if isinstance(source, (str, os.PathLike)) and str(source) in NAMES and not Path(source).exists():
        return str(source)
    return None


def builtin(name: str):
    """The built-in dataset ``name`` (see the module docstring)."""
    if name not in BUILTIN:
        raise LocalizerError(f"no built-in stimuli {name!r}; choose one of {', '.join(NAMES)}")
    return BUILTIN[name]()
