"""plankton_transfer: the library behind the pipeline's stages and commands.

- ``plankton_transfer.data``: finding, validating, selecting and splitting images (class
  folders or EcoTaxa exports); preprocessing, loading and the feature store; prediction
  inputs (image folders, EcoTaxa exports, IFCB bins) and outputs (EcoTaxa tables) (no model
  code: it never imports ``plankton_transfer.models``);
- ``plankton_transfer.models``: the backbone registry, weight files, feature extraction,
  head training, class thresholds, inference and export (ONNX, TorchScript);
- ``plankton_transfer.evaluation``: metrics, figures, the model comparison, the review
  trade-off and model cards;
- ``plankton_transfer.cli``: commands users run outside ``dvc repro`` (console scripts
  declared in pyproject.toml).

The DVC stages live in ``stages/`` (one thin module per stage) and only call this package.
"""
