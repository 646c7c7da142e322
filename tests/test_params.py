"""Parameter dataclasses are the single source of defaults and help for every front end."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from napari_deeppt.cohort import CohortParams
from napari_deeppt.features import FeatureParams
from napari_deeppt.params import field_default, field_doc
from napari_deeppt.response import ResponseParams
from napari_deeppt.tiles import TileGridParams
from napari_deeppt.tissue import TissueParams


@dataclass(frozen=True)
class _Example:
    """Something.

    Attributes
    ----------
    alpha, beta
        Shared words,
        on two lines.
    gamma : int
        Gamma's own.

    Notes
    -----
    not an attribute
    """

    alpha: float = 1.0
    beta: list[int] | None = None
    gamma: int = 3


def test_field_docs_come_from_the_attributes_section():
    assert field_doc(_Example, "alpha") == "Shared words, on two lines."
    assert field_doc(_Example, "beta") == field_doc(_Example, "alpha")
    assert field_doc(_Example, "gamma") == "Gamma's own."
    assert field_doc(_Example, "missing") == ""


def test_field_defaults_and_unknown_fields():
    assert field_default(_Example, "gamma") == 3
    assert field_default(TissueParams, "min_area_um2") == TissueParams().min_area_um2
    with pytest.raises(AttributeError, match="no field 'nope'"):
        field_default(_Example, "nope")


@pytest.mark.parametrize(
    "cls", [TissueParams, TileGridParams, FeatureParams, CohortParams, ResponseParams]
)
def test_every_public_parameter_is_documented(cls):
    """Every field of a parameter dataclass says what it means (the docks' tooltips)."""
    from dataclasses import fields

    assert all(field_doc(cls, f.name) for f in fields(cls))


def test_feature_params_refuse_what_cannot_work():
    """A storage dtype or batch size that cannot work is refused when the settings are made."""
    with pytest.raises(ValueError, match="dtype"):
        FeatureParams(dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        FeatureParams(batch_size=0)
    assert FeatureParams(dtype="float32").dtype == "float32"


def test_cohort_params_refuse_what_cannot_work():
    """Worker counts below one and negative retries are refused when the settings are made."""
    with pytest.raises(ValueError, match="n_workers"):
        CohortParams(n_workers=0)
    with pytest.raises(ValueError, match="retries"):
        CohortParams(retries=-1)
