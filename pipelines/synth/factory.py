"""Moved to :mod:`pipelines.lines.factory.synth`; this name stays only while ``benchmarks/_common.py`` imports it."""

from pipelines.lines.factory.synth import synth_factory

__all__ = ["synth_factory"]
