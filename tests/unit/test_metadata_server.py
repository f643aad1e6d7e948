"""The metadata server over real loopback TCP (127.0.0.1, port 0, root namespace loopback only).

Instances are told apart by the client's source port: each test client registers its port with
the resolver before sending, standing in for the wiring's "port the request arrived on". The
token reply's TTL is checked through the set_ttl seam; real packets are the lab's job.
"""
from __future__ import annotations

import asyncio
import socket

import pytest

from agent.metadata.identity import IdentitySigner
from agent.metadata.ratelimit import RateLimiter
from agent.metadata.server import ConnectionInfo, Limits, MetadataServer, set_ip_ttl
from agent.metadata.tokens import TokenIssuer
from tests.unit.test_metadata_document import INSTANCE_ID, OTHER_ID, USER_DATA, sample

SIGNER = IdentitySigner.generate()


class Harness:
    """A server on 127.0.0.1:0 whose resolver maps client ports to documents."""

    def __init__(self, limiter=None, limits=Limits(), resolver=None) -> None:
        self.by_port: dict[int, object] = {}
        self.ttl_calls: list[int] = []
        self.infos: list[ConnectionInfo] = []
        self.server = MetadataServer(resolver or self._resolve, SIGNER, TokenIssuer(b"k" * 32),
                                     limiter or RateLimiter(rate=1000, burst=1000), limits,
                                     set_ttl=lambda sock, ttl: self.ttl_calls.append(ttl))

    def _resolve(self, info: ConnectionInfo):
        self.infos.append(info)
        return self.by_port.get(info.peer[1])

    async def __aenter__(self):
        self.srv = await self.server.serve("127.0.0.1", 0, listener="test")
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.srv.close()
        await self.srv.wait_closed()

    async def connect(self, doc):
        # Bind first, so the resolver knows the port before the server accepts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.by_port[sock.getsockname()[1]] = doc
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return Client(reader, writer)


class Client:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def request(self, method, path, headers=(), raw=None):
        """Send one request; return (status, headers dict, body) or None if the server closed."""
        if raw is None:
            lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254"]
            lines += [f"{k}: {v}" for k, v in headers]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.writer.write(raw)
        await self.writer.drain()
        return await self.response()

    async def response(self):
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        pairs = (line.partition(":") for line in lines[1:] if line)
        hdrs = {k.lower(): v.strip() for k, _, v in pairs}
        body = await self.reader.readexactly(int(hdrs["content-length"]))
        return status, hdrs, body

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionError:
            return True

    def close(self):
        self.writer.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


TTL = ("X-aws-ec2-metadata-token-ttl-seconds", "300")


async def get_token(h, doc):
    c = await h.connect(doc)
    status, hdrs, body = await c.request("PUT", "/latest/api/token", [TTL])
    assert status == 200 and hdrs["connection"] == "close"
    assert hdrs["x-aws-ec2-metadata-token-ttl-seconds"] == "300"
    assert await c.closed()  # closed after a token reply (its TTL is not restored)
    return body.decode()


def test_optional_get_without_token_and_keep_alive():
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            status, hdrs, body = await c.request("GET", "/latest/meta-data/instance-id")
            assert (status, body) == (200, INSTANCE_ID.encode())
            assert hdrs["content-type"] == "text/plain" and hdrs["server"] == "EC2ws"
            status, hdrs, body = await c.request("GET", "/latest/user-data")
            assert (status, body) == (200, USER_DATA)
            assert hdrs["content-type"] == "application/octet-stream"
            status, _, body = await c.request("GET", "/latest/meta-data/nope")
            assert status == 404 and b"/latest/meta-data/nope" not in body
            c.close()
            assert h.infos[0].listener == "test" and h.infos[0].local[0] == "127.0.0.1"
    run(main())


def test_required_needs_a_token_and_token_uses_hop_limit():
    async def main():
        doc = sample(options={"http_tokens": "required", "http_put_response_hop_limit": 3})
        async with Harness() as h:
            c = await h.connect(doc)
            assert (await c.request("GET", "/latest/meta-data/"))[0] == 401
            assert (await c.request("GET", "/"))[0] == 401
            c.close()
            token = await get_token(h, doc)
            assert h.ttl_calls == [3]
            c = await h.connect(doc)
            status, hdrs, body = await c.request(
                "GET", "/latest/meta-data/instance-id", [("X-aws-ec2-metadata-token", token)])
            assert (status, body) == (200, INSTANCE_ID.encode())
            assert int(hdrs["x-aws-ec2-metadata-token-ttl-seconds"]) <= 300
            bad = token[:-1] + ("A" if token[-1] != "A" else "B")
            assert (await c.request("GET", "/latest/meta-data/instance-id",
                                    [("X-aws-ec2-metadata-token", bad)]))[0] == 401
            c.close()
    run(main())


def test_optional_with_invalid_token_is_401():
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            status, _, _ = await c.request("GET", "/latest/meta-data/instance-id",
                                           [("X-aws-ec2-metadata-token", "garbage")])
            assert status == 401
            c.close()
    run(main())


def test_token_of_another_instance_is_401():
    async def main():
        mine = sample(options={"http_tokens": "required"})
        other = sample(instance_id=OTHER_ID, options={"http_tokens": "required"})
        async with Harness() as h:
            token = await get_token(h, other)
            c = await h.connect(mine)
            assert (await c.request("GET", "/latest/meta-data/instance-id",
                                    [("X-aws-ec2-metadata-token", token)]))[0] == 401
            c.close()
            c = await h.connect(other)
            status, _, body = await c.request("GET", "/latest/meta-data/instance-id",
                                              [("X-aws-ec2-metadata-token", token)])
            assert (status, body) == (200, OTHER_ID.encode())
            c.close()
    run(main())


@pytest.mark.parametrize("headers,status", [
    ([], 400),
    ([("X-aws-ec2-metadata-token-ttl-seconds", "0")], 400),
    ([("X-aws-ec2-metadata-token-ttl-seconds", "21601")], 400),
    ([("X-aws-ec2-metadata-token-ttl-seconds", "ten")], 400),
    ([TTL, ("X-Forwarded-For", "192.168.0.10")], 403),
])
def test_token_put_refusals(headers, status):
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            answer = await c.request("PUT", "/latest/api/token", headers)
            assert answer[0] == status
            assert h.ttl_calls == []  # the TTL is only changed for a token reply
            # the connection stays usable after a refusal
            assert (await c.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            c.close()
    run(main())


@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/latest/meta-data/", "GET"), ("DELETE", "/latest/api/token", "PUT"),
    ("HEAD", "/", "GET"), ("OPTIONS", "/", "GET"), ("PATCH", "/latest/user-data", "GET"),
    ("GET", "/latest/api/token", "PUT"), ("PUT", "/latest/meta-data/", "GET"),
])
def test_other_methods_are_405(method, path, allow):
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            status, hdrs, _ = await c.request(method, path, [TTL])
            assert status == 405 and hdrs["allow"] == allow
            c.close()
    run(main())


@pytest.mark.parametrize("raw", [
    b"GET /latest/meta-data/ HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /latest/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET /latest/meta-data/ HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(80))
    + b"\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /latest/meta-data/ HTTP/2.0\r\n\r\n",
    b"GET /latest/meta-data/ HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /latest/meta-data/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
    b"GET /l\xffatest HTTP/1.1\r\n\r\n",
])
def test_bad_requests_are_400_and_closed_and_service_goes_on(raw):
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            answer = await c.request(None, None, raw=raw)
            assert answer is not None and answer[0] == 400
            assert answer[1]["connection"] == "close"
            assert await c.closed()
            c2 = await h.connect(sample())
            assert (await c2.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            c.close()
            c2.close()
    run(main())


def test_rate_limit_answers_429_per_instance():
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=3, clock=lambda: now[0])

    async def main():
        async with Harness(limiter=limiter) as h:
            c = await h.connect(sample())
            statuses = [(await c.request("GET", "/latest/meta-data/ami-id"))[0] for _ in range(5)]
            assert statuses == [200, 200, 200, 429, 429]
            other = await h.connect(sample(instance_id=OTHER_ID))
            assert (await other.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            now[0] += 1.0
            assert (await c.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            c.close()
            other.close()
    run(main())


def test_endpoint_disabled_gets_no_answer():
    async def main():
        async with Harness() as h:
            c = await h.connect(sample(options={"http_endpoint": "disabled"}))
            assert await c.request("GET", "/latest/meta-data/instance-id") is None
            c.close()
            c = await h.connect(sample(options={"http_endpoint": "disabled"}))
            assert await c.request("PUT", "/latest/api/token", [TTL]) is None
            assert h.ttl_calls == []
            c.close()
    run(main())


def test_unknown_connection_gets_no_answer_and_resolver_errors_are_contained():
    calls = []

    def resolver(info):
        calls.append(info)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return None if len(calls) == 1 else sample()

    async def main():
        async with Harness(resolver=resolver) as h:
            for _ in range(2):  # unknown, then a failing resolver: both silent closes
                c = await h.connect(None)
                assert await c.request("GET", "/latest/meta-data/") is None
                c.close()
            c = await h.connect(None)
            assert (await c.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            c.close()
    run(main())


def test_connection_caps_global_and_per_instance():
    async def main():
        limits = Limits(max_connections=3, max_connections_per_instance=2)
        async with Harness(limits=limits) as h:
            mine = [await h.connect(sample()) for _ in range(2)]
            await asyncio.sleep(0.05)  # let the server accept them
            third = await h.connect(sample())
            assert await third.closed()  # over the per-instance cap
            other = await h.connect(sample(instance_id=OTHER_ID))
            assert (await other.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            fourth = await h.connect(sample(instance_id="i-0aaaaaaaaaaaaaaaa"))
            assert await fourth.closed()  # over the global cap
            mine[0].close()
            await asyncio.sleep(0.05)
            again = await h.connect(sample())
            assert (await again.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            for c in (mine[1], third, other, fourth, again):
                c.close()
    run(main())


def test_idle_connection_is_closed_after_the_read_timeout():
    async def main():
        async with Harness(limits=Limits(read_timeout=0.2)) as h:
            c = await h.connect(sample())
            c.writer.write(b"GET /latest/meta-data/ HTTP/1.1\r\n")  # never finished
            assert await c.closed()
            c.close()
    run(main())


def test_request_budget_per_connection():
    async def main():
        async with Harness(limits=Limits(max_requests_per_connection=2)) as h:
            c = await h.connect(sample())
            first = await c.request("GET", "/latest/meta-data/ami-id")
            assert first[0] == 200 and first[1]["connection"] == "keep-alive"
            # The last one the budget allows says so: the client opens a new connection
            # instead of sending into one that is closing.
            last = await c.request("GET", "/latest/meta-data/ami-id")
            assert last[0] == 200 and last[1]["connection"] == "close"
            assert await c.closed()
            c.close()
    run(main())


def test_http10_and_connection_close_are_honoured():
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            raw = b"GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n"
            answer = await c.request(None, None, raw=raw)
            assert answer[0] == 200 and answer[1]["connection"] == "close"
            assert await c.closed()
            c = await h.connect(sample())
            answer = await c.request("GET", "/", [("Connection", "close")])
            assert answer[0] == 200 and answer[2].endswith(b"latest")
            assert await c.closed()
    run(main())


def test_set_ip_ttl_sets_the_socket_option():
    for family, level, option in ((socket.AF_INET, socket.IPPROTO_IP, socket.IP_TTL),
                                  (socket.AF_INET6, socket.IPPROTO_IPV6,
                                   socket.IPV6_UNICAST_HOPS)):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with sock:
            set_ip_ttl(sock, 1)
            assert sock.getsockopt(level, option) == 1
            set_ip_ttl(sock, 64)
            assert sock.getsockopt(level, option) == 64


def test_options_changed_while_running_apply_to_the_next_request():
    async def main():
        async with Harness() as h:
            c = await h.connect(sample())
            assert (await c.request("GET", "/latest/meta-data/ami-id"))[0] == 200
            port = c.writer.get_extra_info("sockname")[1]
            h.by_port[port] = sample(options={"http_tokens": "required"})
            assert (await c.request("GET", "/latest/meta-data/ami-id"))[0] == 401
            h.by_port[port] = sample(options={"http_endpoint": "disabled"})
            assert await c.request("GET", "/latest/meta-data/ami-id") is None
            c.close()
    run(main())
