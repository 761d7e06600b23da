"""Beam pipelines, one module per job, plus the transforms and skeleton they share."""
