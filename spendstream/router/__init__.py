"""Model-cascading router: cheap model for easy requests, escalate for hard ones."""

from .budget import BudgetView
from .complexity import KeywordHeuristic, LearnedComplexity
from .policy import RouterConfig, load_config
from .router import Decision, Router, RouteRequest

__all__ = [
    "BudgetView",
    "Decision",
    "KeywordHeuristic",
    "LearnedComplexity",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "load_config",
]
