"""gRPC client of prefmine.v1.Recommender: plain functions and the `prefmine client recommend` printer.

``credentials`` (serve.tls.channel_credentials) makes a call over TLS (a direct-ingress port with --tls-cert, or
a TLS terminator in front of Serve's proxy); without it the channel is plain text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc


def call_metadata(app: str | None = None, api_key: str | None = None) -> tuple:
    """Metadata of a call: ``application`` (only needed when the cluster runs several Serve applications) and
    ``x-api-key`` (default: $PREFMINE_API_KEY)."""
    api_key = api_key if api_key is not None else os.environ.get("PREFMINE_API_KEY")
    return ((("application", app),) if app else ()) + ((("x-api-key", api_key),) if api_key else ())


@contextmanager
def connect(addr: str, app: str | None = None, api_key: str | None = None,
            credentials: grpc.ChannelCredentials | None = None) -> Iterator[tuple[pb_grpc.RecommenderStub, tuple]]:
    """A channel to HOST:PORT (TLS with ``credentials``, else plain text); yields (stub, metadata) (see
    call_metadata)."""
    channel = grpc.secure_channel(addr, credentials) if credentials is not None else grpc.insecure_channel(addr)
    with channel:
        yield pb_grpc.RecommenderStub(channel), call_metadata(app, api_key)


def recommend(
    addr: str,
    user_id: str,
    k: int,
    exclude: Iterable[str] = (),
    timeout: float = 10.0,
    app: str | None = None,
    api_key: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> pb.RecommendResponse:
    """Call Recommend once; raises grpc.RpcError on a non-OK status."""
    request = pb.RecommendRequest(user_id=user_id, k=k, exclude_item_ids=list(exclude))
    with connect(addr, app, api_key, credentials) as (stub, metadata):
        return stub.Recommend(request, timeout=timeout, metadata=metadata)


def model_info(addr: str, timeout: float = 10.0, app: str | None = None, api_key: str | None = None,
               credentials: grpc.ChannelCredentials | None = None) -> pb.ModelInfoResponse:
    """Call ModelInfo once; raises grpc.RpcError on a non-OK status."""
    with connect(addr, app, api_key, credentials) as (stub, metadata):
        return stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout, metadata=metadata)


def format_response(resp: pb.RecommendResponse, title_width: int = 60) -> str:
    """A readable table of a RecommendResponse."""
    head = (f"bundle {resp.bundle_version}" + (f"  arm {resp.arm}" if resp.arm else "")
            + ("  (cold start: popular items)" if resp.cold_start else ""))
    lines = [head, f"{'rank':>4}  {'item_id':<14} {'score':>10}  title", "-" * (34 + title_width)]
    for rank, item in enumerate(resp.items, 1):
        title = item.title if len(item.title) <= title_width else item.title[: title_width - 1] + "…"
        lines.append(f"{rank:>4}  {item.item_id:<14} {item.score:>10.4f}  {title}")
    if not resp.items:
        lines.append("(no items)")
    return "\n".join(lines)


def client_recommend(addr: str, user: str, k: int, exclude: Iterable[str] = (), timeout: float = 10.0,
                     credentials: grpc.ChannelCredentials | None = None) -> int:
    """`prefmine client recommend`: print the slate as a table; returns the exit code (1 on a gRPC error)."""
    try:
        resp = recommend(addr, user, k, exclude, timeout=timeout, credentials=credentials)
    except grpc.RpcError as e:
        print(f"prefmine client: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(format_response(resp))
    return 0
