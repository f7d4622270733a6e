"""Torch-free runtimes that execute an exported FOCUS artefact: one :class:`Predictor` each.

The service's backends (``service.backends``) and export's parity checks (``export.parity``,
``export.tensorrt``) run artefacts through these same classes, so what export verifies is what
serves. Each module imports its library only when a predictor is constructed.
"""
