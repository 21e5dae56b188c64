"""The model lab: modules no line uses yet, each with its tests and its benchmark, kept for what they measured.

- :mod:`model.lab.moe` -- top-k mixture of experts (``benchmarks/moe.py``)
- :mod:`model.lab.depth` -- dynamic depth: a gated encoder whose samples exit early (``benchmarks/skip.py``)
- :mod:`model.lab.attention` -- chunked attention with global summary tokens
- :mod:`model.lab.distill` -- contrastive alignment and distillation into a smaller student
  (``benchmarks/distill_student.py``)

A module leaves the lab when a line's model uses it. Like the rest of ``model/``, it imports neither
``pipelines`` nor ``connectors``.
"""
