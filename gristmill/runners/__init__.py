"""Runners gristmill adds to Beam: the Dask engine with its per-bundle fix."""
