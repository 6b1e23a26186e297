"""How to select: the options shared by ``localizer select``, ``extract --selection`` and ``run --select.*``.

Light on purpose (no numpy, no torch): the command line is built from the signatures that use these names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal

from localizer.errors import LocalizerError, opt
from localizer.files import CONTROL_KINDS

# the selection parameters of localizer.select (and of extract, and run's --select.*), in signature order
PARAMETERS = ("abs", "alternative", "statistic", "rows", "top", "per_layer", "count", "fdr", "range", "bottom",
              "controls", "seed", "split_half")  # fmt: skip
Alternative = Literal["greater", "two-sided"]
Statistic = Literal["welch", "mean_diff", "cohens_d"]
Rows = Literal["localize", "all"]
STATISTICS = ("welch", "mean_diff", "cohens_d")
ROWS = ("localize", "all")
MAX_CONTROLS = 1000

# The docstring of the selection parameters, shared by every function that takes them (and so by their --help).
PARAMETERS_DOC = """abs: test |activation| (as AlKhamissi et al.) instead of the signed activation.
        alternative: greater (one-sided, positive > control) or two-sided (ranks units by |t|).
        statistic: rank units by welch (Welch t), mean_diff (mean over positive - mean over control of the tested
            values, as DeepLocalizer) or cohens_d; t, p and q are stored for every unit whichever ranks.
        rows: the rows selected on: localize (the localize rows when the stimuli have a split; the validation rows
            are held out) or all (every row, as AlKhamissi et al.; no held-out validation t).
        top: select the global top PCT percent of units by t, k = floor(PCT x units / 100) (e.g. 1% or 0.5).
        per_layer: with top, take the top PCT percent of every layer instead of globally.
        count: select K units instead of a percentage.
        fdr: select every unit with BH q < Q and t > 0 (instead of top).
        range: select K random units whose t percentile lies in LOW-HIGH, e.g. 80-90 (K from top or count).
        bottom: select the K least selective units, smallest |t| (K from top or count).
        controls: random control sets of each kind (global, layer_matched, magnitude_matched).
        seed: seed of the control sets, the range rule and the split halves.
        split_half: also select on two random halves of the localize rows and report their Dice overlap."""


@dataclass
class SelectionOptions:
    """How to pick the network and its controls, as stored in the selection file (``selection`` attribute, JSON).

    Built from the parameters of :func:`localizer.select` with :meth:`from_parameters`.

    Attributes:
        rule: ``top`` (top-k by t), ``fdr`` (q < fdr and t > 0), ``range`` (k random units in a t percentile band),
            ``bottom`` (the k least selective units: smallest |t|).
        top: percentage of units as a decimal string (``"1"`` = 1%), k = floor(top x units / 100) exactly.
        count: k as a number of units (overrides ``top``).
        per_layer: with ``top``, take the top k% of each layer instead of globally.
        fdr: the q threshold of rule ``fdr``.
        range: ``(low, high)`` t percentiles of rule ``range``.
        abs: test |activation| instead of the signed activation.
        alternative: ``greater`` (positive > control) or ``two-sided`` (ranking then uses |t|).
        statistic: what ranks the units: ``welch`` (t), ``mean_diff`` (mean positive - mean control of the tested
            values) or ``cohens_d``.
        rows: ``localize`` (hold the validation rows out) or ``all``.
        controls: random control sets per kind; seed: their random seed.
        split_half: also select on two random halves of the localize rows and report their Dice overlap.
    """

    rule: str = "top"
    top: str = "1"
    count: int | None = None
    per_layer: bool = False
    fdr: float | None = None
    range: tuple[float, float] | str | None = None
    abs: bool = False
    alternative: str = "greater"
    statistic: str = "welch"
    rows: str = "localize"
    controls: int = 10
    seed: int = 0
    split_half: bool = False
    kinds: list[str] = field(default_factory=lambda: list(CONTROL_KINDS))

    def __post_init__(self):
        self.top = parse_percent(self.top)
        if self.rule not in ("top", "fdr", "range", "bottom"):
            raise LocalizerError(f"unknown selection rule {self.rule!r}; choose top, fdr, range or bottom")
        if self.alternative not in ("greater", "two-sided"):
            raise LocalizerError(f"{opt('alternative')} must be 'greater' or 'two-sided', got {self.alternative!r}")
        if self.statistic not in STATISTICS:
            raise LocalizerError(f"{opt('statistic')} must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.rows not in ROWS:
            raise LocalizerError(f"{opt('rows')} must be one of {', '.join(ROWS)}, got {self.rows!r}")
        if self.count is not None and self.count < 1:
            raise LocalizerError(f"{opt('count')} must be >= 1, got {self.count}")
        if self.rule == "fdr" and not (self.fdr is not None and 0 < self.fdr <= 1):
            raise LocalizerError(f"{opt('fdr')} must be in (0, 1], got {self.fdr}")
        if self.rule == "range":
            if isinstance(self.range, str):
                self.range = parse_range(self.range)
            if self.range is None or not (0 <= self.range[0] < self.range[1] <= 100):
                raise LocalizerError(
                    f"{opt('range')} must be LOW-HIGH percentiles with 0 <= LOW < HIGH <= 100, got {self.range}"
                )
        if self.seed < 0:
            raise LocalizerError(f"{opt('seed')} must be >= 0, got {self.seed}")
        if self.controls > MAX_CONTROLS:
            raise LocalizerError(
                f"{opt('controls')} {self.controls} is more than {MAX_CONTROLS} sets of each kind (the smallest "
                f"empirical p is already 1/{MAX_CONTROLS + 1})"
            )
        if self.controls < 0:
            raise LocalizerError(f"{opt('controls')} must be >= 0, got {self.controls}")
        bad = [k for k in self.kinds if k not in CONTROL_KINDS]
        if bad:
            raise LocalizerError(f"unknown control kinds {bad}; choose from {', '.join(CONTROL_KINDS)}")

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> SelectionOptions:
        """The options from the flat selection parameters of :func:`localizer.select` (:data:`PARAMETERS`, all of them
        present in ``values``; other keys are ignored), which name the rule by which option is set."""
        v = {name: values[name] for name in PARAMETERS}
        rules = [rule for rule, on in (("fdr", v["fdr"] is not None), ("range", v["range"] is not None),
                                       ("bottom", v["bottom"])) if on]  # fmt: skip
        if len(rules) > 1:
            raise LocalizerError(
                f"choose one of {opt('fdr')}, {opt('range')}, {opt('bottom')} (got {', '.join(rules)})"
            )
        if v["fdr"] is not None and v["count"] is not None:
            raise LocalizerError(
                f"{opt('count')} does not apply to {opt('fdr')} (it selects every unit with q < Q and t > 0)"
            )
        if v["per_layer"] and (rules or v["count"] is not None):
            raise LocalizerError(f"{opt('per_layer')} works with {opt('top')} only")
        v.pop("bottom")
        return cls(rule=rules[0] if rules else "top", **v)

    @property
    def band(self) -> tuple[float, float]:
        """The ``(low, high)`` t percentiles of rule ``range``."""
        if not isinstance(self.range, tuple):
            raise LocalizerError(f"rule 'range' needs {opt('range')} as LOW-HIGH percentiles, got {self.range!r}")
        return self.range

    def ranking(self, stats: Mapping[str, Any]) -> Any:
        """The flat ``[U]`` statistic that ranks units (before ``alternative``): t, the mean difference or d."""
        if self.statistic == "mean_diff":
            return stats["mean_positive"] - stats["mean_control"]
        return stats["d"] if self.statistic == "cohens_d" else stats["t"]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_percent(value: str | float | int) -> str:
    """``"1%"``, ``"0.5"``, ``2`` → the decimal string of a percentage in (0, 100]."""
    text = str(value).strip().removesuffix("%").strip()
    try:
        pct = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise LocalizerError(f"{opt('top')} must be a percentage like 1% or 0.5, got {value!r}") from None
    if not 0 < pct <= 100:
        raise LocalizerError(f"{opt('top')} must be in (0, 100], got {value!r}")
    return text


def parse_range(value: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", str(value))
    if not m:
        raise LocalizerError(f"{opt('range')} must look like 80-90, got {value!r}")
    return float(m.group(1)), float(m.group(2))
