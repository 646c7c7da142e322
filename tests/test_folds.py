"""Issue 13, item 5: folds that fit the data, chosen (and said) before any feature work."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deeppt.errors import ExpressionTableError
from napari_deeppt.model.folds import fit_folds, group_folds
from napari_deeppt.model.settings import TrainingSettings


def _split_works(n_groups: int, settings: TrainingSettings) -> bool:
    """Whether training's own splits succeed: each outer fold, its inner split, the final."""
    groups = np.repeat(np.arange(n_groups), 3)
    rng = np.random.default_rng(0)
    for fold in group_folds(groups, settings.outer_folds, rng):
        group_folds(np.delete(groups, fold), settings.inner_folds, rng)
    group_folds(groups, settings.inner_folds, rng)
    return True


def test_five_sections_train_with_leave_one_section_out():
    """The default 5 × 5 cannot be filled by 5 sections: 5 outer (one section held out each)
    × 4 inner folds, and the note says so."""
    settings, note = fit_folds(5, TrainingSettings(), explicit=False, groups="sections")
    assert (settings.outer_folds, settings.inner_folds) == (5, 4)
    assert note.startswith("5 sections (slides): 5 outer (one held out each) × 4 inner folds")
    assert "instead of the default 5 × 5" in note
    assert settings.lr == TrainingSettings().lr  # nothing else changed


@pytest.mark.parametrize("n_groups", range(3, 31))
def test_default_folds_always_fit_and_change_only_when_needed(n_groups):
    settings, note = fit_folds(n_groups, TrainingSettings(), explicit=False)
    assert _split_works(n_groups, settings)
    if n_groups >= 7:  # 5 outer folds leave ≥ 5 training patients for 5 inner folds
        assert (settings, note) == (TrainingSettings(), None)
    else:
        assert note is not None and settings.outer_folds == min(5, n_groups)


def test_folds_the_user_gave_are_kept_or_refused_never_changed():
    asked = TrainingSettings(outer_folds=5, inner_folds=5)
    with pytest.raises(
        ExpressionTableError, match=r"5 sections \(slides\) cannot fill 5 outer × 5 inner"
    ):
        fit_folds(5, asked, explicit=True, groups="sections")
    fits = TrainingSettings(outer_folds=3, inner_folds=2)
    assert fit_folds(5, fits, explicit=True) == (fits, None)


def test_too_few_groups_for_any_folds_are_refused():
    with pytest.raises(ExpressionTableError, match="at least 3 patients"):
        fit_folds(2, TrainingSettings(), explicit=False)


def test_the_command_line_leaves_fold_counts_to_train_unless_given(monkeypatch, tmp_path, capsys):
    """`deeppt train` without --outer-folds lets train() fit the default folds; a value given
    is passed on (kept or refused)."""
    import napari_deeppt.model.training as training
    from napari_deeppt.cli import main

    seen = []

    def fake_train(*args, **kwargs):
        seen.append(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(training, "train", fake_train)  # the command imports it when run
    (tmp_path / "m.csv").write_text("slide,sample_id,patient_id\n")
    (tmp_path / "e.csv").write_text("gene\n")
    for extra in ([], ["--outer-folds", "5"]):
        try:
            main(
                [
                    "train",
                    str(tmp_path / "m.csv"),
                    str(tmp_path / "e.csv"),
                    "--out",
                    str(tmp_path / "x.deeppt"),
                    *extra,
                ]
            )
        except SystemExit:
            pass
    assert "outer_folds" not in seen[0] and "inner_folds" not in seen[0]
    assert seen[1]["outer_folds"] == 5 and "inner_folds" not in seen[1]
    assert "fewer when the patients or sections cannot fill them" in _help(main, capsys)


def _help(main, capsys):
    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    return " ".join(capsys.readouterr().out.split())
