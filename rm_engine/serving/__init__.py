"""Scores from trained versions: ``RewardModel`` (load, score, rescore), several versions as one reward, and
the reward server for RL trainers."""
