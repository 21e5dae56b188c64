"""fusionline models: ``nn.Module``s, their configs, preprocessing, training and the inference path.

Imports neither ``pipelines`` nor ``connectors``: everything here sees arrays and tensors, not files.

- :mod:`model.config` -- :class:`~model.config.InspectorConfig` (``config.json``)
- :mod:`model.pretrained` -- ``save_pretrained``/``from_pretrained`` for every model (safetensors + SHA-256,
  ``model_type``)
- :mod:`model.preprocess` -- arrays -> model-ready tensors (images, log-mel)
- :mod:`model.encoders` -- image / audio / text encoders -> tokens
- :mod:`model.router` -- :class:`~model.router.MultimodalRouter`, attention fusion with modality weights
- :mod:`model.heads` -- per-task classification heads
- :mod:`model.factory_model` -- :class:`~model.factory_model.FactoryInspector`, the factory line's model
- :mod:`model.train` -- the training loop over tensors
- :mod:`model.predictor` -- :class:`~model.predictor.Predictor`, the one inference path
- :mod:`model.runtimes` -- ONNX export, ONNX Runtime sessions and INT8 quantisation behind that path
- :mod:`model.lab` -- modules no line uses yet (mixture of experts, dynamic depth, chunked attention, distillation)
"""
