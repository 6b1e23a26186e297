"""Build the shipped language localizer files (run once; the outputs are committed under localizer/resources/).

- language.jsonl: every sentence of sentences.txt (positive) and one length-matched non-word string per sentence
  (control): same number of words, each pseudoword of about the same length as the word it replaces, built from the
  onset/vowel/coda chunks of the sentences' own words (real letter and syllable statistics) and kept only when
  wordfreq does not know it as an English word. A seeded 75/25 localize/validation split by sentence pair.
- minimal_pairs.jsonl: >= 100 grammatical/ungrammatical pairs from templates (subject-verb agreement across an
  attractor, determiner-noun number, reflexive gender, argument structure, irregular past tense).

    .venv/bin/pip install wordfreq && .venv/bin/python scripts/make_language_stimuli.py
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from wordfreq import zipf_frequency

DATA = Path(__file__).resolve().parents[1] / "localizer" / "resources"
VOWELS = "aeiouy"
CHUNK = re.compile(r"[^aeiouy]*[aeiouy]+|[^aeiouy]+$")


def chunks_of(words):
    """Counts of word-initial, medial and final chunks (consonants + vowels; a final consonant run)."""
    first, middle, last = Counter(), Counter(), Counter()
    for w in words:
        parts = CHUNK.findall(w)
        if not parts:
            continue
        first[parts[0]] += 1
        for p in parts[1:-1]:
            middle[p] += 1
        if len(parts) > 1:
            last[parts[-1]] += 1
    return first, middle, last


def pseudoword(target: int, tables, rng: random.Random, lexicon: set[str]) -> str:
    first, middle, last = tables

    def draw(counter):
        keys = list(counter)
        return rng.choices(keys, weights=[counter[k] for k in keys])[0]

    low, high = max(2, target - 1), max(target + 1, 3)  # very short words get 2-3 letter pseudowords
    for _ in range(20000):
        w = draw(first)
        while len(w) < target - 2:
            w += draw(middle)
        if rng.random() < 0.7 or len(w) < low:
            w += draw(last)
        if low <= len(w) <= high and w not in lexicon and zipf_frequency(w, "en") == 0 and any(c in VOWELS for c in w):
            return w
    raise RuntimeError(f"no pseudoword of length {target}")


def language(seed: int = 0) -> list[dict]:
    sentences = [s.strip() for s in (DATA / "sentences.txt").read_text().splitlines() if s.strip()]
    words = [w.lower() for s in sentences for w in re.findall(r"[A-Za-z]+", s)]
    tables = chunks_of(words)
    lexicon = set(words)
    rng = random.Random(seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    validation = set(order[: len(order) // 4])
    rows = []
    for i, s in enumerate(sentences):
        split = "validation" if i in validation else "localize"
        tokens = re.findall(r"[A-Za-z']+", s)
        fake = [pseudoword(len(t), tables, rng, lexicon) for t in tokens]
        text = " ".join(fake)
        text = text[0].upper() + text[1:] + "."
        rows.append({"text": s, "positive": True, "split": split})
        rows.append({"text": text, "positive": False, "split": split})
    return rows


def minimal_pairs(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    nouns = [
        ("key", "keys"),
        ("book", "books"),
        ("teacher", "teachers"),
        ("picture", "pictures"),
        ("dog", "dogs"),
        ("letter", "letters"),
        ("window", "windows"),
        ("song", "songs"),
        ("car", "cars"),
        ("painting", "paintings"),
    ]
    attractors = [
        ("cabinet", "cabinets"),
        ("student", "students"),
        ("garden", "gardens"),
        ("friend", "friends"),
        ("house", "houses"),
        ("tree", "trees"),
    ]
    preds = [
        ("is", "are", "on the table"),
        ("was", "were", "very old"),
        ("is", "are", "in the kitchen"),
        ("was", "were", "broken yesterday"),
        ("has", "have", "a red cover"),
    ]
    for _ in range(45):  # agreement across an attractor of the other number
        (n_sg, n_pl), (a_sg, a_pl), (v_sg, v_pl, rest) = rng.choice(nouns), rng.choice(attractors), rng.choice(preds)
        if rng.random() < 0.5:
            good, bad = f"The {n_sg} near the {a_pl} {v_sg} {rest}.", f"The {n_sg} near the {a_pl} {v_pl} {rest}."
        else:
            good, bad = f"The {n_pl} near the {a_sg} {v_pl} {rest}.", f"The {n_pl} near the {a_sg} {v_sg} {rest}."
        out.append({"good": good, "bad": bad, "phenomenon": "subject_verb_agreement"})
    for _ in range(20):  # determiner-noun number
        n_sg, n_pl = rng.choice(nouns)
        rest = rng.choice(["looks new", "belongs to my aunt", "is very heavy", "was a gift"])
        if rng.random() < 0.5:
            out.append(
                {"good": f"This {n_sg} {rest}.", "bad": f"These {n_sg} {rest}.", "phenomenon": "determiner_noun"}
            )
        else:
            rest_pl = (
                rest.replace("looks", "look").replace("belongs", "belong").replace("is", "are").replace("was", "were")
            )
            out.append(
                {"good": f"These {n_pl} {rest_pl}.", "bad": f"This {n_pl} {rest_pl}.", "phenomenon": "determiner_noun"}
            )
    people = [
        ("boy", "himself", "herself"),
        ("girl", "herself", "himself"),
        ("king", "himself", "herself"),
        ("queen", "herself", "himself"),
        ("man", "himself", "herself"),
        ("woman", "herself", "himself"),
        ("actress", "herself", "himself"),
        ("father", "himself", "herself"),
        ("mother", "herself", "himself"),
    ]
    verbs = ["hurt", "saw", "praised", "blamed", "described", "photographed"]
    for _ in range(20):  # reflexive gender agreement
        (noun, good_r, bad_r), verb = rng.choice(people), rng.choice(verbs)
        out.append(
            {
                "good": f"The {noun} {verb} {good_r} in the mirror.",
                "bad": f"The {noun} {verb} {bad_r} in the mirror.",
                "phenomenon": "anaphor_agreement",
            }
        )
    subjects = ["The child", "My neighbor", "The old man", "The student", "Her brother", "The guest"]
    transitive = [
        ("devoured", "the cake"),
        ("repaired", "the clock"),
        ("admired", "the view"),
        ("borrowed", "a pen"),
        ("described", "the painting"),
    ]
    intransitive = [("slept", "soundly"), ("arrived", "late"), ("laughed", "loudly"), ("fainted", "suddenly")]
    for _ in range(20):  # argument structure
        subj = rng.choice(subjects)
        if rng.random() < 0.5:
            verb, obj = rng.choice(transitive)
            out.append({"good": f"{subj} {verb} {obj}.", "bad": f"{subj} {verb}.", "phenomenon": "argument_structure"})
        else:
            verb, adv = rng.choice(intransitive)
            out.append(
                {
                    "good": f"{subj} {verb} {adv}.",
                    "bad": f"{subj} {verb} the table {adv}.",
                    "phenomenon": "argument_structure",
                }
            )
    irregular = [
        ("wrote", "writed", "a letter"),
        ("ate", "eated", "an apple"),
        ("took", "taked", "the bus"),
        ("saw", "seed", "a bird"),
        ("gave", "gived", "a present"),
        ("drove", "drived", "the car"),
        ("sang", "singed", "a song"),
        ("broke", "breaked", "the glass"),
        ("caught", "catched", "the ball"),
    ]
    for _ in range(20):  # irregular past tense
        subj = rng.choice(subjects)
        good_v, bad_v, obj = rng.choice(irregular)
        out.append(
            {
                "good": f"{subj} {good_v} {obj} yesterday.",
                "bad": f"{subj} {bad_v} {obj} yesterday.",
                "phenomenon": "irregular_past",
            }
        )
    unique = list({(r["good"], r["bad"]): r for r in out}.values())
    return unique


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", default=str(DATA), help="folder to write language.jsonl and minimal_pairs.jsonl into")
    p.add_argument("--write", action="store_true", help="write the files (without it: only count what would be built)")
    args = p.parse_args()
    lang, pairs = language(), minimal_pairs()
    if args.write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "language.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lang))
        (out / "minimal_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    print(
        f"language: {len(lang)} rows; minimal pairs: {len(pairs)}" + ("" if args.write else " (not written: --write)")
    )


if __name__ == "__main__":
    main()
