"""The public scoring API under its first name: ``from rm_engine.scoring import RewardModel, reward_function``
keeps working for code written against it; the code lives in :mod:`rm_engine.serving.scoring`."""
from rm_engine.serving.scoring import (  # noqa: F401 - re-exported
    RewardModel,
    Score,
    evaluate_records,
    load_usable,
    rescore_stored,
    reward_function,
)
