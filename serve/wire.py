"""The gRPC services the Serve proxy hosts, with request parsing that reports bad bytes instead of failing.

Ray Serve's gRPC proxy registers the servicer functions named in ``gRPCOptions.grpc_servicer_functions`` and
routes every method to the application's ingress (a method named like the RPC). It parses the request with the
method's ``request_deserializer`` *in the proxy*; the generated one (``RecommendRequest.FromString``) raises on
a string field that is not valid UTF-8 or on an oversized message, and grpc then answers a bare
"Exception deserializing request" with status INTERNAL, which names no field. ``add_services`` (the function
to name in ``grpc_servicer_functions``) registers the same services with a lenient deserializer instead:

* a message larger than ``MAX_REQUEST_BYTES`` (4 MiB) becomes ``Malformed(RESOURCE_EXHAUSTED, ...)`` without
  being parsed (and without its bytes travelling on to the replica);
* bytes that do not parse become ``Malformed(INVALID_ARGUMENT, "<field> is not valid UTF-8")``, the field
  found by parsing again with a twin of the message whose string fields are bytes;

and the ingress answers a ``Malformed`` with its code and message. It also registers the standard health
service ``grpc.health.v1.Health``; the proxy routes its ``Check`` to the ingress like any other method
(``Watch`` and ``List`` too; the ingress answers ``Check`` and ``List``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

MAX_REQUEST_BYTES = 4 * 1024 * 1024
SERVICE = "prefmine.v1.Recommender"
SERVICER_FUNCTION = "serve.wire.add_services"


@dataclass
class Malformed:
    """Stands in for a request that could not be parsed; the ingress answers it with ``code`` and ``message``."""

    rpc: str
    code: str  # a grpc.StatusCode name
    message: str

    @property
    def status(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.code]


_TWINS: dict[str, type] = {}


def _bytes_twin(cls) -> type:
    """The message class ``cls`` with every string field turned into bytes (a separate descriptor pool)."""
    name = cls.DESCRIPTOR.full_name
    if name not in _TWINS:
        fdp = descriptor_pb2.FileDescriptorProto()
        cls.DESCRIPTOR.file.CopyToProto(fdp)

        def patch(messages):
            for m in messages:
                if m.options.map_entry:  # a map's entries as plain repeated messages (a map key cannot be bytes):
                    m.ClearField("options")  # the same wire format, and a bad key is named like rules.boosts[0].key
                for f in m.field:
                    if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                        f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                patch(m.nested_type)

        patch(fdp.message_type)
        fdp.ClearField("dependency")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _TWINS[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    return _TWINS[name]


def _is_repeated(field) -> bool:
    rep = getattr(field, "is_repeated", None)  # protobuf >= 6 (label is gone in 7)
    return bool(rep if rep is not None else field.label == field.LABEL_REPEATED)


def _bad_utf8_field(msg, prefix: str = "") -> str | None:
    """Path of the first bytes field (of a twin) that is not valid UTF-8, e.g. ``events[2].item_id``."""
    for field, value in msg.ListFields():
        path = prefix + field.name
        repeated = _is_repeated(field)
        if field.type == field.TYPE_BYTES:
            values = value if repeated else [value]
            for i, v in enumerate(values):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{path}[{i}]" if repeated else path
        elif field.type == field.TYPE_MESSAGE:
            values = value if repeated else [value]
            for i, v in enumerate(values):
                sub = f"{path}[{i}]." if repeated else f"{path}."
                found = _bad_utf8_field(v, sub)
                if found:
                    return found
    return None


def describe_decode_error(cls, raw: bytes) -> str:
    """Why ``raw`` is not a ``cls``: the field that is not valid UTF-8, else that the bytes are not the message."""
    try:
        twin = _bytes_twin(cls).FromString(raw)
    except DecodeError:
        return f"request is not a valid {cls.DESCRIPTOR.name} (protobuf wire format)"
    field = _bad_utf8_field(twin)
    if field:
        return f"{field} is not valid UTF-8"
    return f"request is not a valid {cls.DESCRIPTOR.name}"


def lenient(cls, rpc: str):
    """A request deserializer for ``cls`` that returns ``Malformed`` instead of raising."""

    def parse(raw: bytes):
        if len(raw) > MAX_REQUEST_BYTES:
            return Malformed(rpc, "RESOURCE_EXHAUSTED",
                             f"request is {len(raw)} bytes, at most {MAX_REQUEST_BYTES} (MAX_REQUEST_BYTES)")
        try:
            return cls.FromString(raw)
        except DecodeError:
            return Malformed(rpc, "INVALID_ARGUMENT", describe_decode_error(cls, raw))

    return parse


def _handlers(service_descriptor, servicer) -> dict[str, grpc.RpcMethodHandler]:
    out = {}
    for method in service_descriptor.methods:
        inp = message_factory.GetMessageClass(method.input_type)
        out_cls = message_factory.GetMessageClass(method.output_type)
        fn = getattr(servicer, method.name)
        if method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler
        else:
            handler = grpc.unary_unary_rpc_method_handler
        out[method.name] = handler(
            fn, request_deserializer=lenient(inp, method.name), response_serializer=out_cls.SerializeToString
        )
    return out


def add_services(servicer, server) -> None:
    """``grpc_servicer_functions`` entry: prefmine.v1.Recommender and grpc.health.v1.Health, lenient parsing.

    Same shape as the generated ``add_RecommenderServicer_to_server`` (the proxy passes a mock servicer and
    replaces the method bodies with its routing; only the deserializers registered here are kept).
    """
    for desc in (pb.DESCRIPTOR.services_by_name["Recommender"],
                 health_pb2.DESCRIPTOR.services_by_name["Health"]):
        handler = grpc.method_handlers_generic_handler(desc.full_name, _handlers(desc, servicer))
        server.add_generic_rpc_handlers((handler,))


__all__ = ["MAX_REQUEST_BYTES", "Malformed", "SERVICER_FUNCTION", "add_services", "health_pb2", "health_pb2_grpc",
           "pb_grpc"]
