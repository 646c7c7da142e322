"""Dock widget "Treatment response": the open slide's drug scores, with its cohort as context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import (
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    Table,
    create_widget,
)

__all__ = ["ResponseWidget"]


class ResponseWidget(Container):
    """SELECT-style matching scores of the slide shown in an expression layer."""

    def __init__(self, napari_viewer: Any) -> None:
        import napari

        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.result: Any = None
        self.expression_layer = create_widget(
            annotation=napari.layers.Image, label="expression layer"
        )
        self.cohort = FileEdit(label="cohort predictions", mode="r", filter="*.csv *.tsv")
        self.partners = FileEdit(label="partner table", mode="r", filter="*.csv *.tsv")
        self.quantile = FloatSpinBox(
            label="inactive below quantile", value=0.33, min=0.01, max=0.99, step=0.01
        )
        self.threshold = FloatSpinBox(
            label="responder at score ≥", value=0.54, min=0.0, max=1.0, step=0.01
        )
        self.run_button = PushButton(text="Score drugs")
        self.status = Label(label="status", value="")
        self.table = Table(
            label="drugs",
            value={
                "drug": [],
                "score": [],
                "responder": [],
                "cohort rank": [],
                "missing partners": [],
            },
        )
        self.extend(
            [
                self.expression_layer,
                self.cohort,
                self.partners,
                self.quantile,
                self.threshold,
                self.run_button,
                self.status,
                self.table,
            ]
        )
        self.run_button.changed.connect(self.run)

    def run(self) -> Any:
        """Score the slide together with its cohort and fill the table."""
        import pandas as pd

        from ..response import response_scores

        try:
            layer = self.expression_layer.value
            prediction = None if layer is None else layer.metadata.get("deeppt_prediction")
            if prediction is None:
                raise ValueError(
                    "choose the '<slide> expression' layer made by 'Predict expression' first"
                )
            cohort_path = Path(str(self.cohort.value or ""))
            if not cohort_path.is_file():
                raise ValueError(
                    "choose the cohort's predictions (e.g. cohort_expression.csv "
                    "from 'deeppt run'): scores are relative to a cohort"
                )
            cohort = pd.read_csv(cohort_path, sep=None, engine="python", index_col=0)
            cohort.index = cohort.index.astype(str)
            name = prediction.slide_name or layer.name
            row = prediction.slide_expression.rename(name).to_frame().T
            table = pd.concat([cohort.drop(index=name, errors="ignore"), row])
            result = response_scores(
                table,
                str(self.partners.value),
                quantile=self.quantile.value,
                threshold=self.threshold.value,
            )
        except Exception as exc:
            self.status.value = f"error: {exc}"
            return None
        self.result = result
        scores = result.scores.loc[name]
        ranks = result.scores.rank(pct=True).loc[name]
        drugs = list(scores.sort_values(ascending=False, na_position="last").index)
        self.table.value = {
            "drug": drugs,
            "score": [None if pd.isna(scores[d]) else round(float(scores[d]), 3) for d in drugs],
            "responder": ["yes" if result.responders.loc[name, d] else "no" for d in drugs],
            "cohort rank": [None if pd.isna(ranks[d]) else f"{ranks[d]:.0%}" for d in drugs],
            "missing partners": [", ".join(result.missing_partners.get(d, [])) for d in drugs],
        }
        demo = " (DEMO MODEL predictions)" if prediction.demo else ""
        notes = (
            f"; {len(result.messages)} drug(s) without usable partners" if result.messages else ""
        )
        self.status.value = (
            f"{name}: {int(result.responders.loc[name].sum())} predicted "
            f"response(s) among {len(drugs)} drugs, cohort of "
            f"{len(result.scores)}{demo}{notes}"
        )
        return result
