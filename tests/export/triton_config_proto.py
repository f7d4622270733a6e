"""Triton's own ``ModelConfig`` schema (``model_config.proto`` of triton-inference-server/common),
as generated Python in ``tritonclient.grpc.model_config_pb2`` (the dev extra installs it).

``parse`` uses ``google.protobuf.text_format``, Triton's config.pbtxt format: unknown fields,
wrong types and bad enum values raise ``text_format.ParseError``, so a config that parses here
has the structure tritonserver's parser expects.
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind


def parse(text: str) -> model_config_pb2.ModelConfig:
    """``config.pbtxt`` text -> ModelConfig message (raises text_format.ParseError)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())
