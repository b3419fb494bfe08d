"""plankton_transfer: the library behind the pipeline's stages and commands.

- ``plankton_transfer.data``: finding, validating, selecting and splitting images;
  preprocessing, loading and the feature store (no model code: it never imports
  ``plankton_transfer.models``);
- ``plankton_transfer.models``: the backbone registry, weight files, feature extraction,
  head training and inference;
- ``plankton_transfer.evaluation``: metrics, figures and the model comparison;
- ``plankton_transfer.cli``: commands users run outside ``dvc repro`` (console scripts
  declared in pyproject.toml).

The DVC stages live in ``stages/`` (one thin module per stage) and only call this package.
"""
