"""Data handling: scan (class folders, EcoTaxa exports), images, validation, selection,
filtering, splitting, preprocessing, loading and the feature store; prediction inputs
(sources, ifcb) and outputs (predictions, ecotaxa_tsv). Never imports the model registry
(``plankton_transfer.models``)."""
