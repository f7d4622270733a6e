"""Pieces of Triton's ``config.pbtxt`` (``ModelConfig`` in protobuf text format).

Small builders that return lists of lines, so each model's config reads top to bottom in
``export.triton`` / ``export.triton_ensemble``. The tests parse every generated config with
``tritonclient.grpc.model_config_pb2`` (Triton's own schema), which rejects unknown fields,
wrong types and bad enum values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Tensor = tuple[str, str, tuple[int, ...]]  # (name, TYPE_*, dims without the batch dimension)


def quote(text: str) -> str:
    """A text-format string literal; control characters are refused rather than escaped."""
    if not text.isprintable():
        raise ValueError(f"refusing a non-printable string in a Triton config: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in values) + " ]"


def tensors(field: str, items: Sequence[Tensor]) -> list[str]:
    """``field [ {...}, {...} ]``: a repeated ModelInput/ModelOutput in list syntax."""
    lines = [f"{field} ["]
    for i, (name, data_type, shape) in enumerate(items):
        lines += [
            "  {",
            f"    name: {quote(name)}",
            f"    data_type: {data_type}",
            f"    dims: {dims(shape)}",
            "  }" + ("," if i < len(items) - 1 else ""),
        ]
    return [*lines, "]"]


def preferred_batches(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch`` ([1] when it is 1)."""
    sizes, b = [], 2
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    return sizes or [1]


def dynamic_batching(max_batch: int, max_queue_delay_us: int) -> list[str]:
    return [
        "dynamic_batching {",
        f"  preferred_batch_size: {dims(preferred_batches(max_batch))}",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
    ]


def instance_group(count: int, kind: str) -> list[str]:
    return ["instance_group [", "  {", f"    count: {count}", f"    kind: {kind}", "  }", "]"]


def parameters(values: Mapping[str, str]) -> list[str]:
    """The ``parameters`` map, one ``parameters { key value { string_value } }`` per entry.

    ``export/triton_python/focus_bootstrap.py`` reads ``python_path`` back from this exact
    layout (key and value on consecutive lines) before any third-party import.
    """
    lines = []
    for key, value in values.items():
        lines += [
            "parameters {",
            f"  key: {quote(key)}",
            f"  value: {{ string_value: {quote(value)} }}",
            "}",
        ]
    return lines


def header(comment: str, name: str) -> list[str]:
    return [f"# {comment}; written by `focus export triton`", f"name: {quote(name)}"]
