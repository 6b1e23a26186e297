"""`localizer compare`: overlap of selections against an independent computation (sets, math.comb)."""

from __future__ import annotations

import json
from math import comb

import pytest
from helpers import synthetic, write_activation_file

from localizer.cli import main


def by_hand(a: set, b: set, m: int) -> dict:
    k = len(a & b)
    tail = sum(comb(len(a), x) * comb(m - len(a), len(b) - x) for x in range(k, min(len(a), len(b)) + 1))
    return {
        "overlap": k,
        "dice": 2 * k / (len(a) + len(b)),
        "chance_dice": 2 * len(a) * len(b) / (m * (len(a) + len(b))),
        "p_hypergeom": tail / comb(m, len(b)),
    }


@pytest.fixture(scope="module")
def selections(tmp_path_factory):
    from localizer.selection import SelectionOptions
    from localizer.selection.select import select_file

    d = tmp_path_factory.mktemp("compare")
    layers, positive = synthetic(seed=3, planted=(3, 60, 61, 62, 140))
    acts = write_activation_file(d / "a.h5", layers, positive)
    files = []
    for name, options in {
        "top.h5": SelectionOptions(top="5%"),
        "abs.h5": SelectionOptions(top="10%", abs=True),
        "count.h5": SelectionOptions(count=3, seed=2),
    }.items():
        select_file(acts, d / name, options, log_dir=None)
        files.append(d / name)
    other_layers = {k: v for k, v in list(layers.items())[:2]}
    select_file(write_activation_file(d / "b.h5", other_layers, positive), d / "other.h5", SelectionOptions(top="5%"),
                log_dir=None)  # fmt: skip
    return d, files


def flat_sets(path):
    from localizer import Selection

    s = Selection.read(path)
    per = s.per_layer(s.mask)
    return set(s.mask.nonzero()[0].tolist()), {k: set(v.nonzero()[0].tolist()) for k, v in per.items()}, s


def test_matches_sets_and_the_hypergeometric_tail(selections, tmp_path, capsys):
    d, files = selections
    out = tmp_path / "c.json"
    assert main(["compare", *map(str, files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert set(doc) == {"files", "n_units", "n_selected", "dice", "chance_dice", "overlap", "p_hypergeom", "per_layer"}
    sets = [flat_sets(f) for f in files]
    m = sets[0][2].layout.total
    assert doc["n_units"] == m and doc["n_selected"] == [len(s[0]) for s in sets]
    for i in range(3):
        for j in range(3):
            want = by_hand(sets[i][0], sets[j][0], m)
            for key, value in want.items():
                assert doc[key][i][j] == pytest.approx(value, rel=1e-9, abs=1e-300), (key, i, j)
            for layer, per in doc["per_layer"].items():
                a, b = sets[i][1][layer], sets[j][1][layer]
                units = len(sets[0][2].per_layer(sets[0][2].mask)[layer])
                if a or b:
                    assert per["dice"][i][j] == pytest.approx(by_hand(a, b, units)["dice"])
                    assert per["p_hypergeom"][i][j] == pytest.approx(by_hand(a, b, units)["p_hypergeom"], rel=1e-9)
                else:
                    assert per["dice"][i][j] is None
    assert doc["dice"][0][0] == 1.0 and f"{len(sets[0][0] & sets[1][0])} shared units" in printed
    assert "Dice 1.000" in printed and "chance" in printed


def test_bad_inputs_are_one_line(selections, tmp_path, capsys):
    d, files = selections
    assert main(["compare", str(files[0]), str(d / "other.h5")]) == 2
    err = capsys.readouterr().err
    assert "select from different units" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", str(files[0])]) == 2
    assert "at least two selection files" in capsys.readouterr().err
    assert main(["compare", str(files[0]), str(d / "a.h5")]) == 2  # an activation file is not a selection
    assert "localizer compare: error:" in capsys.readouterr().err
    assert main(["compare", str(files[0]), str(files[1]), "--out", str(files[0])]) == 2  # never over an input
    assert "is an input" in capsys.readouterr().err
