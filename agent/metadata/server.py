"""The metadata service's asyncio HTTP server: who is asking, may they, and what they get.

This module owns the connection loop and the order of the checks; the answers come from
tree.py (paths), tokens.py (IMDSv2) and ratelimit.py, the wire syntax from http11.py.

Identity: the server never looks at a header or a claimed address to decide who is asking. It
calls `resolver(ConnectionInfo)` - the listener's label and the local and peer addresses of the
accepted socket - and the wiring answers from what it knows about the dataplane (one listener
per instance port, or per VPC with the port mapped to distinct local addresses/ports after
anti-spoofing). None means "nobody we serve": the connection is closed without a reply.

At accept, the resolver is asked once: unknown or disabled -> closed at once; over the global or
the per-instance connection cap (Limits) -> closed at once, so one guest cannot hold every slot.

Per request, in this order:
1. read the head with a bounded buffer (Limits.max_head_bytes) and a timeout; too large or
   malformed -> 400 and close; a small body (Content-Length <= http11.MAX_BODY) is read and
   dropped.
2. resolve the instance (again for every request on a keep-alive connection, so options changed
   while running apply at once). Unknown, or http_endpoint "disabled" -> the connection is closed
   with no reply at all: to the guest the endpoint looks absent, as the issue asks ("no answer
   for a whole probe window"), and nothing tells a prober that metadata exists but is off.
   (EC2 itself answers some clients differently; silence is the stricter choice, and the wiring
   may additionally drop the packets in nftables.)
3. rate limit per instance id (token bucket): over it -> 429 Too Many Requests, which is what
   EC2's throttling answers and what cloud-init and the AWS SDKs retry with backoff; dropping
   would make clients wait for timeouts instead. The connection stays open.
4. method: only GET and PUT (405 with Allow otherwise); PUT only on /latest/api/token, which
   only accepts PUT.
5. PUT token -> tokens.put_token. The reply is written with the socket's IP TTL (or IPv6 hop
   limit) set to the instance's http_put_response_hop_limit and the connection is then closed,
   *not* restored: TCP may retransmit or send the FIN after we return, and a restored TTL would
   let a retransmitted token travel further than the hop limit. Closing costs a client one new
   connection per token (tokens live up to 6 hours).
6. GET -> tokens.authorize_get (401 when required and missing, or when invalid), then
   tree.resolve.
Anything unexpected while answering one connection is logged and closes that connection only.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Callable

from agent.metadata import http11, reply, tokens, tree
from agent.metadata.document import InstanceDocument
from agent.metadata.identity import IdentitySigner
from agent.metadata.ratelimit import RateLimiter
from agent.metadata.reply import Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionInfo:
    """What the resolver may use to identify the instance: the socket's endpoints, never headers."""

    #: The label given to serve() for this listener (e.g. a port or VPC id), or None.
    listener: str | None
    local: tuple[str, int]
    peer: tuple[str, int]


Resolver = Callable[[ConnectionInfo], InstanceDocument | None]


def set_ip_ttl(sock: socket.socket, ttl: int) -> None:
    """Set the unicast TTL (IPv4) or hop limit (IPv6) of the socket's outgoing packets."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one guest from holding the server's memory or connections."""

    #: Request line + headers, including the blank line.
    max_head_bytes: int = 8192
    #: Seconds to wait for a request head (also the keep-alive idle time).
    read_timeout: float = 10.0
    max_requests_per_connection: int = 100
    #: Connections open at once over all instances; more are closed at once.
    max_connections: int = 1024
    #: Connections open at once per instance, so one guest cannot use up max_connections.
    max_connections_per_instance: int = 16


#: Documents whose built tree is kept (a host's instances; past it the cache starts over).
TREE_CACHE_SIZE = 4096


class MetadataServer:
    """Serves the EC2 metadata tree for the instances `resolver` recognises."""

    def __init__(self, resolver: Resolver, signer: IdentitySigner, issuer: tokens.TokenIssuer,
                 limiter: RateLimiter | None = None, limits: Limits = Limits(),
                 set_ttl: Callable[[socket.socket, int], None] = set_ip_ttl) -> None:
        self._resolver = resolver
        self._signer = signer
        self._issuer = issuer
        self._limiter = limiter or RateLimiter()
        self._limits = limits
        #: The seam for the token reply's TTL: tests record calls, the lab checks real packets.
        self._set_ttl = set_ttl
        self._open = 0
        self._open_per_instance: dict[str, int] = {}
        #: id(document) -> (document, its built tree): see _tree().
        self._trees: dict[int, tuple[InstanceDocument, tree.Node]] = {}

    async def serve(self, host: str | None = None, port: int | None = None, *,
                    sock: socket.socket | None = None,
                    listener: str | None = None) -> asyncio.Server:
        """Start listening (on host:port, or on a socket the wiring bound, e.g. in a namespace)."""
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.handle(reader, writer, listener)
        # `limit` bounds the reader's buffer: readuntil() fails instead of growing past it.
        return await asyncio.start_server(on_connect, host, port, sock=sock,
                                          limit=self._limits.max_head_bytes)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     listener: str | None = None) -> None:
        """Answer one connection until it closes, errs or ends its request budget."""
        info = ConnectionInfo(listener, _addr(writer.get_extra_info("sockname")),
                              _addr(writer.get_extra_info("peername")))
        try:
            # Resolved once at accept, for the connection caps and to close on strangers at once;
            # again per request (options may change while the connection lives).
            doc = self._resolver(info)
        except Exception:
            log.exception("metadata: resolver failed")
            doc = None
        if doc is None or doc.metadata_options.http_endpoint == "disabled":
            writer.close()
            return
        key = doc.instance_id
        if (self._open >= self._limits.max_connections or self._open_per_instance.get(key, 0)
                >= self._limits.max_connections_per_instance):
            writer.close()
            return
        self._open += 1
        self._open_per_instance[key] = self._open_per_instance.get(key, 0) + 1
        try:
            budget = self._limits.max_requests_per_connection
            for n in range(budget):
                if not await self._one_request(reader, writer, info, last=n == budget - 1):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except Exception:  # one connection's failure must not stop the service
            log.exception("metadata: connection failed")
        finally:
            self._open -= 1
            self._open_per_instance[key] -= 1
            if not self._open_per_instance[key]:
                del self._open_per_instance[key]
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           info: ConnectionInfo, last: bool = False) -> bool:
        """Read and answer one request; False when the connection should close. The `last`
        request a connection may carry is answered with Connection: close, so a client never
        sends one more into a connection that is closing."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          self._limits.read_timeout)
            request = http11.parse_head(head)
            if request.content_length:
                await asyncio.wait_for(reader.readexactly(request.content_length),
                                       self._limits.read_timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # a request cut short; an empty read is a clean close
                await self._send(writer, reply.error(400), False)
            return False
        except (asyncio.LimitOverrunError, http11.BadRequest):
            await self._send(writer, reply.error(400), False)
            return False

        keep = request.keep_alive and not last
        doc = self._resolver(info)
        if doc is None or doc.metadata_options.http_endpoint == "disabled":
            return False  # silence: see the module docstring
        if not self._limiter.allow(doc.instance_id):
            await self._send(writer, reply.error(429), keep)
            return keep

        is_token_path = request.path == tokens.TOKEN_PATH
        if request.method not in ("GET", "PUT") or (request.method == "PUT") != is_token_path:
            await self._send(writer, reply.error(405, (("Allow", "PUT" if is_token_path
                                                        else "GET"),)), keep)
            return keep

        if request.method == "PUT":
            answer = tokens.put_token(self._issuer, doc.instance_id, request.headers)
            if answer.status == 200:
                sock = writer.get_extra_info("socket")
                self._set_ttl(sock, doc.metadata_options.http_put_response_hop_limit)
                await self._send(writer, answer, False)
                return False
            await self._send(writer, answer, keep)
            return keep

        answer = self._get(doc, request)
        await self._send(writer, answer, keep)
        return keep

    def _tree(self, doc: InstanceDocument) -> tree.Node:
        """The document's built tree, made once per document object (the wiring hands out the
        same object until the instance's spec changes): building it was a third of a GET's
        cost (bench/bench_metadata.py). The entry holds the document, so its id is not reused."""
        hit = self._trees.get(id(doc))
        if hit is None or hit[0] is not doc:
            if len(self._trees) >= TREE_CACHE_SIZE:
                self._trees.clear()
            hit = self._trees[id(doc)] = (doc, tree.build(doc, self._signer))
        return hit[1]

    def _get(self, doc: InstanceDocument, request: http11.Request) -> Reply:
        decision = tokens.authorize_get(self._issuer, doc.instance_id, doc.metadata_options,
                                        request.headers)
        if isinstance(decision, Reply):
            return decision
        answer = tree.resolve(doc, request.target, self._signer, self._tree(doc))
        if decision is not None:  # a valid token: EC2 echoes its remaining lifetime
            answer = Reply(answer.status, answer.body, answer.content_type,
                           answer.headers + (("X-aws-ec2-metadata-token-ttl-seconds",
                                              str(decision)),))
        return answer

    async def _send(self, writer: asyncio.StreamWriter, answer: Reply, keep_alive: bool) -> None:
        writer.write(http11.render(answer, keep_alive))
        await writer.drain()


def _addr(value) -> tuple[str, int]:
    """(host, port) of a socket name (IPv6 names carry flow info and scope id: dropped)."""
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return ("", 0)
