"""The subset of Triton's ``ModelConfig`` (protobuf/model_config.proto of
triton-inference-server/common) that ``focus export triton`` writes, as a real protobuf
descriptor: field names, numbers, types and enums as upstream. ``parse`` uses
``google.protobuf.text_format``, which rejects unknown fields, wrong types and bad enum values,
so a config that parses here has the structure Triton's own parser expects for these fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

F = descriptor_pb2.FieldDescriptorProto


def _field(
    msg: Any,
    name: str,
    number: int,
    ftype: int,
    label: int = F.LABEL_OPTIONAL,
    type_name: str | None = None,
) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name


def _enum(parent: Any, name: str, values: dict[str, int]) -> None:
    e = parent.enum_type.add(name=name)
    for key, number in values.items():
        e.value.add(name=key, number=number)


def _build() -> Any:
    fd = descriptor_pb2.FileDescriptorProto(
        name="focus_test_model_config.proto", package="inference", syntax="proto3"
    )
    _enum(
        fd,
        "DataType",
        {
            "TYPE_INVALID": 0,
            "TYPE_BOOL": 1,
            "TYPE_UINT8": 2,
            "TYPE_UINT16": 3,
            "TYPE_UINT32": 4,
            "TYPE_UINT64": 5,
            "TYPE_INT8": 6,
            "TYPE_INT16": 7,
            "TYPE_INT32": 8,
            "TYPE_INT64": 9,
            "TYPE_FP16": 10,
            "TYPE_FP32": 11,
            "TYPE_FP64": 12,
            "TYPE_STRING": 13,
            "TYPE_BF16": 14,
        },
    )
    group = fd.message_type.add(name="ModelInstanceGroup")
    _enum(group, "Kind", {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3})
    _field(group, "name", 1, F.TYPE_STRING)
    _field(group, "kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    _field(group, "count", 2, F.TYPE_INT32)
    _field(group, "gpus", 3, F.TYPE_INT32, F.LABEL_REPEATED)

    inp = fd.message_type.add(name="ModelInput")
    _enum(inp, "Format", {"FORMAT_NONE": 0, "FORMAT_NHWC": 1, "FORMAT_NCHW": 2})
    _field(inp, "name", 1, F.TYPE_STRING)
    _field(inp, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    _field(inp, "format", 3, F.TYPE_ENUM, type_name=".inference.ModelInput.Format")
    _field(inp, "dims", 4, F.TYPE_INT64, F.LABEL_REPEATED)
    _field(inp, "allow_ragged_batch", 7, F.TYPE_BOOL)
    _field(inp, "optional", 8, F.TYPE_BOOL)

    out = fd.message_type.add(name="ModelOutput")
    _field(out, "name", 1, F.TYPE_STRING)
    _field(out, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    _field(out, "dims", 3, F.TYPE_INT64, F.LABEL_REPEATED)
    _field(out, "label_filename", 4, F.TYPE_STRING)

    batching = fd.message_type.add(name="ModelDynamicBatching")
    _field(batching, "preferred_batch_size", 1, F.TYPE_INT32, F.LABEL_REPEATED)
    _field(batching, "max_queue_delay_microseconds", 2, F.TYPE_UINT64)
    _field(batching, "preserve_ordering", 3, F.TYPE_BOOL)

    param = fd.message_type.add(name="ModelParameter")
    _field(param, "string_value", 1, F.TYPE_STRING)

    config = fd.message_type.add(name="ModelConfig")
    _field(config, "name", 1, F.TYPE_STRING)
    _field(config, "platform", 2, F.TYPE_STRING)
    _field(config, "backend", 17, F.TYPE_STRING)
    _field(config, "max_batch_size", 4, F.TYPE_INT32)
    _field(config, "input", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelInput")
    _field(config, "output", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelOutput")
    _field(
        config, "dynamic_batching", 11, F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching"
    )
    _field(
        config,
        "instance_group",
        7,
        F.TYPE_MESSAGE,
        F.LABEL_REPEATED,
        ".inference.ModelInstanceGroup",
    )
    _field(config, "default_model_filename", 8, F.TYPE_STRING)
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_MESSAGE, type_name=".inference.ModelParameter")
    _field(
        config,
        "parameters",
        14,
        F.TYPE_MESSAGE,
        F.LABEL_REPEATED,
        ".inference.ModelConfig.ParametersEntry",
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _build()


def parse(text: str) -> Any:
    """``config.pbtxt`` text -> ModelConfig message (raises text_format.ParseError)."""
    return text_format.Parse(text, ModelConfig())
