"""Folds of whole groups: patients for bulk slides, sections (slides) for spots.

:func:`check_folds` refuses, before any feature work, fold settings that the groups cannot
fill; :func:`group_folds` makes the folds cross-validation uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DeepPTError, ExpressionTableError
from .settings import TrainingSettings

__all__ = ["check_folds", "fit_folds", "group_folds"]


def group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split samples into ``k`` folds of whole groups (patients, or sections for spots).

    Parameters
    ----------
    groups
        ``(n_samples,)`` group of each sample.
    k
        Folds.
    rng
        Shuffles the groups before they are dealt into folds.

    Returns
    -------
    list of numpy.ndarray
        The sample indices of each fold.

    Raises
    ------
    DeepPTError
        Fewer groups than folds (:func:`check_folds` refuses this before any feature work).
    """
    unique = np.array(sorted(set(groups)))
    if len(unique) < k:  # check_folds refuses this before any feature work
        raise DeepPTError(
            f"{k}-fold cross-validation needs at least {k} groups (patients or sections), "
            f"got {len(unique)}"
        )
    rng.shuffle(unique)
    folds = np.array_split(unique, k)
    return [np.flatnonzero(np.isin(groups, fold)) for fold in folds]


_GROUP_NAMES = {"patients": "patients", "sections": "sections (slides)"}


def _max_inner(n_groups: int, outer: int) -> int:
    """Training groups left when the largest of ``outer`` folds is held out."""
    return n_groups - math.ceil(n_groups / outer)


def check_folds(
    n_groups: int, options: TrainingSettings, groups: str = "patients", source: Any = None
) -> None:
    """Refuse fold settings that ``n_groups`` groups cannot fill, naming settings that work.

    Outer folds hold out whole groups, at least one each, so ``outer_folds ≤ n_groups``;
    the largest outer fold holds ⌈n / outer_folds⌉ groups and leaves n − ⌈n / outer_folds⌉
    training groups, which the inner folds split again: ``inner_folds`` can be at most
    that. :func:`train` checks this before any feature work.

    Parameters
    ----------
    n_groups
        Distinct groups: patients (bulk) or sections, i.e. slides (spots).
    options
        The outer and inner fold counts asked for.
    groups
        ``"patients"`` or ``"sections"``, for the message.
    source
        The manifest or spot table, named first in the message.

    Raises
    ------
    ExpressionTableError
        One line: how many groups there are, why they cannot fill the folds, what works.
    """
    outer, inner, n = options.outer_folds, options.inner_folds, int(n_groups)
    if outer <= n and inner <= _max_inner(n, outer):
        return
    noun = _GROUP_NAMES.get(groups, groups)
    where = f"{source}: " if source is not None else ""
    usable = [o for o in range(min(outer, n), n + 1) if o >= 2 and _max_inner(n, o) >= 2]
    if not usable:
        raise ExpressionTableError(
            f"{where}{n} {noun} are too few for cross-validation, which needs at least 3 "
            f"{noun} (3 outer × 2 inner folds); add {noun}"
        )
    if outer > n:
        problem = f"cannot fill {outer} outer folds (each holds out at least one)"
    else:
        problem = (
            f"cannot fill {outer} outer × {inner} inner folds: holding out an outer fold leaves "
            f"{_max_inner(n, outer)} training {noun}, too few for {inner} inner folds"
        )
    best_outer = usable[0]
    best_inner = min(inner, _max_inner(n, best_outer))
    fewer = " or fewer" if best_inner > 2 else ""
    works = [f"outer_folds={best_outer}, inner_folds={best_inner}{fewer}"]
    more_outer = [o for o in usable if _max_inner(n, o) >= inner]
    if best_inner < inner and more_outer:
        works.append(f"outer_folds={more_outer[0]}, inner_folds={inner}")
    raise ExpressionTableError(f"{where}{n} {noun} {problem}; use {' or '.join(works)}")


def fit_folds(
    n_groups: int,
    options: TrainingSettings,
    explicit: bool,
    groups: str = "patients",
    source: Any = None,
) -> tuple[TrainingSettings, str | None]:
    """The fold settings to train with: the defaults shrunk to fit few groups, and why.

    With the default 5 × 5 folds, five sections (or patients) could not be trained on at
    all. When the fold counts were not given (``explicit`` False) and the groups cannot
    fill them, the largest folds that fit are used: as many outer folds as allowed (one
    group held out each when the groups are fewer than the folds), then as many inner folds
    as the training groups allow. Fold counts the user gave are kept, and refused by
    :func:`check_folds` when the groups cannot fill them.

    Parameters
    ----------
    n_groups
        Distinct groups: patients (bulk) or sections, i.e. slides (spots).
    options
        The settings asked for.
    explicit
        Whether ``outer_folds`` or ``inner_folds`` was given by the user.
    groups, source
        For messages (see :func:`check_folds`).

    Returns
    -------
    settings, note
        The settings to use, and a sentence saying what was changed (None when nothing was).

    Raises
    ------
    ExpressionTableError
        Fewer than 3 groups, or explicit fold counts the groups cannot fill.
    """
    from dataclasses import replace

    n, outer, inner = int(n_groups), options.outer_folds, options.inner_folds
    if explicit or (outer <= n and inner <= _max_inner(n, outer)):
        check_folds(n, options, groups, source)
        return options, None
    for fitted_outer in range(min(outer, n), 1, -1):
        fitted_inner = min(inner, _max_inner(n, fitted_outer))
        if fitted_inner >= 2:
            break
    else:
        check_folds(n, options, groups, source)  # raises: too few groups for any folds
    noun = _GROUP_NAMES.get(groups, groups)
    each = " (one held out each)" if fitted_outer == n else ""
    note = (
        f"{n} {noun}: {fitted_outer} outer{each} × {fitted_inner} inner folds instead of the "
        f"default {outer} × {inner}, which they cannot fill; give outer_folds/inner_folds "
        "to choose others"
    )
    return replace(options, outer_folds=fitted_outer, inner_folds=fitted_inner), note
