"""Sources of the Triton Python-backend models that ``focus export triton`` writes.

Never imported by focus itself: ``export.triton_ensemble`` copies each file into a model's
version directory (``preprocess.py``, ``postprocess.py`` and ``onnxruntime_model.py`` become
``<model>/<version>/model.py``, with ``focus_bootstrap.py`` beside them), where Triton's Python
backend stub runs it. They import ``triton_python_backend_utils`` (the stub's module) and the
torch-free ``models`` package, never a copy of its code.
"""
