"""Server reflection that keeps the proto comments, so `grpcurl describe` shows them.

grpcio-reflection rebuilds each file with ``FileDescriptor.CopyToProto``, which
drops ``source_code_info`` (where comments live), and the generated modules do
not carry it either. ``make generate`` therefore also writes
``mcprouter/v1/descriptor_set.binpb`` (``buf build``, source info included);
this servicer answers with those documented files in place of the bare ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

DESCRIPTOR_SET = "descriptor_set.binpb"


def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto (with comments) of our protos."""
    raw = resources.files("mcprouter.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    # The set also holds its imports (google/protobuf/...) for protoc --decode;
    # those are served as the runtime has them.
    return {f.name: f.SerializeToString() for f in files if f.name.startswith("mcprouter/")}


class DocumentedReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    """The standard reflection servicer, answering our files with their comments."""

    def __init__(self, service_names: Iterable[str], documented: Mapping[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = dict(documented)

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        """Serve reflection requests, swapping in the documented descriptors."""
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                protos = response.file_descriptor_response.file_descriptor_proto
                for index, serialized in enumerate(protos):
                    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                    if name in self._documented:
                        protos[index] = self._documented[name]
            yield response
