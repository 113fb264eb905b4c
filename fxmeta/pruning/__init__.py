"""Removing channels: importance, FLOPs-targeted selection, slimming, self-check, plans, FLOPs."""
