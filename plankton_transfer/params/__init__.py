"""params.yaml: one module per section (``params/<section>.py``), the reading machinery in
``params/core.py``, and the check of every section at once in ``params/every_section.py``."""
