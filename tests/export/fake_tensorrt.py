"""Stand-ins for ``tensorrt`` and cuda-python's ``cudart`` that record what the builder is told.

Only the calls ``export.tensorrt.build_engine`` makes, with TensorRT 10's names and signatures
(docs: Builder, IBuilderConfig, IOptimizationProfile, OnnxParser, ITimingCache). They check
the call pattern and the values passed (profile shapes, flags, pool limits, timing cache
round trip), not TensorRT itself, which needs a GPU.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    network_flags: int | None = None
    parsed: list[str] = field(default_factory=list)
    flags: list[Any] = field(default_factory=list)
    pools: dict[Any, int] = field(default_factory=dict)
    profiles: list[dict[str, tuple]] = field(default_factory=list)
    timing_cache_in: list[bytes] = field(default_factory=list)
    built: int = 0


def make_tensorrt(
    record: Record,
    *,
    version: str = "10.8.0.43",
    weakly_typed: bool = True,
    parse_ok: bool = True,
    inputs: tuple[str, ...] = ("image", "edges"),
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity

    names = ["TF32"] + (["FP16", "BF16"] if weakly_typed else [])
    trt.ILogger = ILogger
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", names)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"])
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    )

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name = name

    class Network:
        def __init__(self, flags: int) -> None:
            record.network_flags = flags
            self.num_inputs = 0
            self._inputs: list[Tensor] = []

        def get_input(self, i: int) -> Tensor:
            return self._inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            assert isinstance(logger, ILogger)
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            record.parsed.append(path)
            if not parse_ok:
                self.num_errors = 1
                return False
            self.network._inputs = [Tensor(n) for n in inputs]
            self.network.num_inputs = len(inputs)
            return True

        def get_error(self, i: int) -> str:
            return "In node 7 (importResize): UNSUPPORTED_NODE: fake"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def __init__(self) -> None:
            self._cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            record.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            record.flags.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            record.profiles.append(profile.shapes)
            return len(record.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record.timing_cache_in.append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self._cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self._cache is not None
            return self._cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            assert isinstance(logger, ILogger)

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            record.built += 1
            return b"fake-plan"

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt


def make_cudart(device_names: tuple[str, ...]) -> types.ModuleType:
    """cuda-python's runtime: calls return (error, *values); error 0 is success."""
    cudart = types.ModuleType("cuda.bindings.runtime")

    def cudaGetDeviceCount() -> tuple[int, int]:  # noqa: N802 - cuda-python's name
        return (0, len(device_names))

    def cudaGetDeviceProperties(i: int) -> tuple[int, Any]:  # noqa: N802
        return (0, types.SimpleNamespace(name=device_names[i].encode() + b"\0\0"))

    cudart.cudaGetDeviceCount = cudaGetDeviceCount
    cudart.cudaGetDeviceProperties = cudaGetDeviceProperties
    return cudart


def install(
    monkeypatch: Any, trt: types.ModuleType | None, cudart: types.ModuleType | None
) -> None:
    """Make ``import tensorrt`` / ``from cuda.bindings import runtime`` see these (None: absent)."""
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    if cudart is None:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(__import__("sys").modules, name, None)
        return
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    for name, module in (
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cudart),
    ):
        monkeypatch.setitem(__import__("sys").modules, name, module)
