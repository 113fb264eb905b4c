"""Removing channels: importance, FLOPs-targeted selection, slimming, self-check, plans, FLOPs."""
from .flops import count_flops, count_params
from .importance import Importance, l1_importance, l2_importance, random_importance
from .plan import PLAN_FORMAT, apply_plan
from .pruner import PruneResult, prune

__all__ = ["PLAN_FORMAT", "Importance", "PruneResult", "apply_plan", "count_flops", "count_params",
           "l1_importance", "l2_importance", "prune", "random_importance"]
