"""Training machinery shared by ``train.py``, ``evaluate.py`` and the search: the train step and epoch loop
(``trainer``), data loaders (``loaders``), checkpoints (``checkpoint``), DDP helpers (``distributed``), YAML-backed
command lines (``config``), run logging (``run_log``) and test-time inference (``inference``). See docs/TRAINING.md.
"""
