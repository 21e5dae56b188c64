"""Kept only for :mod:`pipelines.synth.factory`, an old import path; each line's synthesis lives in its folder."""
