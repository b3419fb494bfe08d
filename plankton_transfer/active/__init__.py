"""Active learning: which unlabelled images are worth labelling next (strategies.py).
``python -m bench.active_learning`` measures how many labels each strategy saves."""
from plankton_transfer.active.strategies import STRATEGIES, check_strategy, select

__all__ = ["STRATEGIES", "check_strategy", "select"]
