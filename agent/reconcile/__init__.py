"""Reconciliation: make the host match the accepted specs, one idempotent step at a time.

steps.py (check/act/verify steps for one instance), planner.py (re-plan until nothing is left),
readiness.py (ready marker on the console), loop.py (the level-triggered loop, backoff, deletes
and orphans).
"""
from agent.reconcile.loop import Reconciler

__all__ = ["Reconciler"]
