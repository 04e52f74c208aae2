"""Prompt-guided decoding, mask post-processing and label assembly."""
