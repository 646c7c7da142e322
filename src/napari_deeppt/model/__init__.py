"""DeepPT's models and their training.

- :mod:`.nn`: the autoencoder and the regressor (torch modules).
- :mod:`.bundle`: :class:`~.bundle.ModelBundle`, the trained model in one file.
- :mod:`.settings`: :class:`~.settings.TrainingSettings`, the cross-validation settings.
- :mod:`.inputs`: checked training inputs, made before any pixel is read.
- :mod:`.sample_features`: features per sample (a bulk slide's tiles, a spot's tile).
- :mod:`.folds`: patient- or section-level folds, checked before any feature work.
- :mod:`.crossval`: nested cross-validation and the final ensemble.
- :mod:`.metrics`: per-gene Pearson R, Holm–Šidák, within-section R for spots.
- :mod:`.training`: :func:`~.training.train`, the one pipeline for bulk slides and spots.

Nothing is imported here, so ``import napari_deeppt.model.metrics`` loads no torch.
"""
