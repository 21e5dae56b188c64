"""The factory defect-inspection line: each part's camera frame and machine sound -> defect class, machine state,
reject gate.

- :mod:`~pipelines.lines.factory.compose` -- the line's graph (source -> replicas -> PLC, MQTT, audit)
- :mod:`~pipelines.lines.factory.handler` -- what a model replica hosts: decode, then the factory inspector
- :mod:`~pipelines.lines.factory.synth` -- labelled synthetic recordings
- :mod:`~pipelines.lines.factory.datasets` / :mod:`~pipelines.lines.factory.train` -- training on a recording
- :mod:`~pipelines.lines.factory.evaluate` -- held-out metrics with the line's own rules
- :mod:`~pipelines.lines.factory.cli` -- ``fusionline synth|train|eval|run|demo factory`` and the run's summary
"""
