"""Data handling: scan, images, validation, selection, filtering, splitting, preprocessing,
loading and the feature store. Never imports the model registry (``plankton_transfer.models``)."""
