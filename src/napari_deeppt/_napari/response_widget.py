"""Dock widget "Treatment response": the open slide's drug scores, with its cohort as context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    PushButton,
    Table,
)

from ..response import ResponseParams
from ._jobs import StatusLine, report_error
from .docking import ScrollingDock
from .fields import layer_picker, param_widget

__all__ = ["ResponseWidget"]


class ResponseWidget(ScrollingDock, Container):
    """SELECT-style matching scores of the slide shown in an expression layer.

    Its status line wraps within the dock (:class:`~._jobs.StatusLine`); errors also go to
    napari's notifications.
    """

    def __init__(self, napari_viewer: Any) -> None:
        import napari

        from .docking import tab_when_docked

        super().__init__(labels=True, scrollable=True)
        self._viewer = napari_viewer
        tab_when_docked(self.native)
        self.result: Any = None
        self.expression_layer = layer_picker(
            napari_viewer,
            napari.layers.Image,
            "expression layer",
            prefer="gene",
            tooltip="a gene map of the slide ('<slide> <gene>', from Predict expression): its "
            "prediction is scored",
        )
        self._score_fields()
        self.status = StatusLine(label="status", value="")
        self.table = Table(
            label="drugs",
            tooltip="one row per drug, best score first: its score (0 to 1), whether that "
            "makes the slide a predicted responder, its rank in the cohort (100% = the "
            "cohort's highest score) and the partner genes the model does not predict",
            value={
                "drug": [],
                "score": [],
                "responder": [],
                "cohort rank": [],
                "missing partners": [],
            },
        )
        self.map_drug = ComboBox(
            label="map drug",
            choices=self._drug_choices,
            nullable=True,
            tooltip="the drug whose tile map 'Show the drug's tile map' draws",
        )
        self.map_button = PushButton(
            text="Show the drug's tile map",
            enabled=False,
            tooltip="each tile scored against the cohort's cut-offs: which regions push the "
            "slide's score up (green) or down (pink); exploratory",
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
                self.map_drug,
                self.map_button,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.map_button.changed.connect(lambda: self.show_map())
        self._cohort_table: Any = None
        self._prediction: Any = None

    def _score_fields(self) -> None:
        """The cohort, the partner table, the two cut-offs and the button that scores."""
        self.cohort = FileEdit(
            label="cohort predictions",
            mode="r",
            filter="*.csv *.tsv",
            tooltip="predicted expression of a cohort of slides, one row per slide and one "
            "column per gene (e.g. cohort_expression.csv from 'deeppt run', same model): "
            "'low' expression is judged against these slides",
        )
        self.partners = FileEdit(
            label="partner table",
            mode="r",
            filter="*.csv *.tsv",
            tooltip="the drugs' partner genes: a CSV or TSV with columns drug, partner "
            "(gene) and type, SL (synthetic lethal: the drug should work better when this "
            "gene is switched off) or SR (synthetic rescue: it should work worse)",
        )
        self.quantile = param_widget(
            ResponseParams,
            "quantile",
            "inactive below quantile",
            min=0.01,
            max=0.99,
            step=0.01,
            tooltip="In plain words: a gene counts as switched off when this slide's value is "
            "among the lowest (this share, 0.33 = the lowest third) of the cohort's; a higher "
            "value switches more genes off.",
        )
        self.threshold = param_widget(
            ResponseParams,
            "threshold",
            "responder at score ≥",
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="In plain words: the score is the share of the drug's partner genes in "
            "the state that favours response (0 to 1); at or above this value the slide is "
            "called a responder.",
        )
        self.run_button = PushButton(
            text="Score drugs",
            tooltip="score every drug of the partner table for the slide's predicted "
            "expression, against the cohort (quick: nothing is predicted again)",
        )

    def run(self) -> Any:
        """Score the slide together with its cohort and fill the table."""
        import pandas as pd

        from ..io.tables import expression_frame
        from ..response import response_scores

        try:
            layer = self.expression_layer.value
            prediction = None if layer is None else layer.metadata.get("deeppt_prediction")
            if prediction is None or "gene" not in layer.metadata:
                raise ValueError(
                    "choose a gene map ('<slide> <gene>') made by 'Predict expression' first"
                )
            cohort_path = Path(str(self.cohort.value or ""))
            if not cohort_path.is_file():
                raise ValueError(
                    "choose the cohort's predictions (e.g. cohort_expression.csv "
                    "from 'deeppt run'): scores are relative to a cohort"
                )
            cohort, _ = expression_frame(cohort_path)  # sample ids as written ("001")
            name = prediction.slide_name or layer.name
            row = prediction.slide_expression.rename(name).to_frame().T
            table = pd.concat([cohort.drop(index=name, errors="ignore"), row])
        except Exception as exc:
            report_error(self.status, exc)
            return None
        result = self._scored(response_scores, table)
        if result is None:
            return None
        self.result = result
        self._cohort_table, self._prediction = table, prediction
        self._slide_name = layer.metadata.get("slide_name", layer.name)
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
        self.table.native.resizeColumnsToContents()
        self.map_drug.reset_choices()
        scored = [d for d in drugs if not pd.isna(scores[d])]
        self.map_drug.value = scored[0] if scored else None
        self.map_button.enabled = bool(scored)
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

    def _scored(self, scorer: Any, *args: Any) -> Any:
        """``scorer(*args, partners, quantile, threshold)``, or None with the error shown."""
        try:
            return scorer(
                *args,
                str(self.partners.value),
                quantile=self.quantile.value,
                threshold=self.threshold.value,
            )
        except Exception as exc:
            report_error(self.status, exc)
            return None

    def _drug_choices(self, _widget: Any = None) -> list[str]:
        result = getattr(self, "result", None)
        return [] if result is None else list(result.scores.columns)

    def show_map(self, drug: str | None = None) -> Any:
        """Add (or update) ``<slide> response``: the drug's score of every tile."""
        from ..response import tile_response
        from .layers import response_layer_data, show_map

        drug = drug or self.map_drug.value
        if self.result is None or drug is None:
            self.status.value = "score the drugs first"
            return None
        tiles = self._scored(tile_response, self._prediction, self._cohort_table)
        if tiles is None:
            return None
        scores = tiles.scores[drug].to_numpy(float)
        layer = show_map(
            self._viewer,
            response_layer_data(
                self._prediction, scores, drug, self._slide_name, self.threshold.value
            ),
        )
        share = (
            float(np.nanmean(scores >= self.threshold.value)) if np.isfinite(scores).any() else 0
        )
        self.status.value = (
            f"{drug}: {share:.0%} of tiles at or above {self.threshold.value:.2f} "
            "(tile scores against the cohort's cut-offs; exploratory)"
        )
        return layer
