"""TLS for the gRPC endpoints prefmine runs itself (direct ingress) and for its client.

``TlsConfig(cert_file, key_file, client_ca_file)``: the server's certificate chain and private key (PEM), and,
optionally, the CA whose certificates clients must present (mutual TLS: a client without one is refused during
the handshake). ``server_credentials()`` turns it into gRPC server credentials; ``channel_credentials`` is the
client side.

Direct ingress (``prefmine serve --direct-port``) runs Ray Serve's gRPC server inside the ingress replica, and
Serve has no TLS option for it: ``install_direct_ingress_tls`` makes the gRPC servers that Serve starts
afterwards *in this process* listen with TLS (Serve adds its listening address through
``ray.serve._private.default_impl.add_grpc_address``, which it looks up when it starts a server, so the
ingress's constructor, which runs before Serve starts the replica's server, replaces it). Serve's proxy actor
(``--grpc-port``) is not ours to change: terminate TLS in front of it (docs/serving-security.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import grpc


@dataclass
class TlsConfig:
    """PEM files of the server: ``cert_file`` (chain) and ``key_file``; ``client_ca_file``: require client
    certificates signed by this CA. All empty: no TLS."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None

    def __post_init__(self):
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls: --tls-cert and --tls-key go together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("tls: --tls-client-ca needs --tls-cert and --tls-key")
        for opt, path in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file),
                          ("--tls-client-ca", self.client_ca_file)):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"tls: {opt} {path} does not exist")
        for name in ("cert_file", "key_file", "client_ca_file"):
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def as_dict(self) -> dict:
        return asdict(self)

    def server_credentials(self) -> grpc.ServerCredentials:
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(ca_file: str | None = None, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials:
    """Client TLS: trust ``ca_file`` (default: the system's roots) and, for mutual TLS, present ``cert_file`` and
    ``key_file``."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("tls: --tls-cert and --tls-key go together")

    def read(p):
        return Path(p).read_bytes() if p else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def install_direct_ingress_tls(config: TlsConfig) -> None:
    """From now on, gRPC servers that Ray Serve starts in this process (the direct-ingress server of an ingress
    replica) listen with ``config``'s TLS instead of in plain text."""
    from ray.serve._private import default_impl

    credentials = config.server_credentials()  # read now: a bad file fails the replica's start, not a request

    def add_grpc_address(grpc_server, server_address: str):
        grpc_server.add_secure_port(server_address, credentials)

    default_impl.add_grpc_address = add_grpc_address
