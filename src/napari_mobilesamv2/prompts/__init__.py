"""Prompt sampling: object-aware boxes (the detector) and the grid-search baseline."""
