"""Scorers: per-document scores (Ask-LLM, Density, Random) as pure functions and model wrappers."""
