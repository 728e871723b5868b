"""Measuring the student: the relative score, lm-eval, the per-round scoreboard,
ablation arms and the referee check.
"""
