"""Rollout policy: which station runs which model version."""
