"""Prompts: object-aware boxes (the detector), the grid-search baseline, and prompts a user gives."""
