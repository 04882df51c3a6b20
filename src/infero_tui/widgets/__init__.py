"""Reusable console widgets, one per module."""
