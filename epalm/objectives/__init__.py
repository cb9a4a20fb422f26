"""Objectives: what a kind of training owns (its model, loss, batches, validation and report),
by name (``task.objective``): ``generative`` (caption, VQA) and ``contrastive`` (retrieval)."""

from epalm.objectives.base import Objective, objective_for, objectives, register_objective

__all__ = ["Objective", "objective_for", "objectives", "register_objective"]
