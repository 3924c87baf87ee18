"""Coupled-channel groups: analysis (which channels must be removed together), per-op rules, the
index spaces they live in, shape-constant rewriting, physical removal, and the exact test oracle."""
