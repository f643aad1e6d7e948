"""The instance metadata service (issue 12): EC2's http://169.254.169.254 for Kumo guests.

The pure core, one responsibility per module:
- document.py  InstanceDocument: everything served for one instance, plus its MetadataOptions
               (http_tokens, http_endpoint, hop limit, tags in metadata). Strictly validated so
               nothing a user chose can forge listing entries.
- tree.py      (document, path) -> Reply: the EC2 tree (versions, meta-data/, user-data,
               dynamic/instance-identity/), listings as cloud-init parses them.
- identity.py  the identity document's JSON, its signature and PKCS#7 (IdentitySigner: the
               cloud's key + published self-signed certificate), and verify helpers.
- tokens.py    IMDSv2: stateless HMAC tokens bound to the instance, TTL rules, X-Forwarded-For.
- ratelimit.py per-instance token bucket.
- http11.py    strict parsing of one request head, rendering of one reply.
- reply.py     Reply and EC2's fixed error pages (nothing from the request is echoed).
- server.py    MetadataServer: the asyncio connection loop and the order of the checks.
- service.py   the wiring (issue 12): one listener per VPC router namespace on the host,
               documents from the pushed specs (contract extension instance-metadata,
               agent/contract/metadata_v1.py), identification by (VPC, source address) after
               anti-spoofing, identity signatures made by the controller (PresignedSigner),
               supervised as the network service's "metadata" subsystem. docs/metadata.md.

The lab (tests/lab/test_metadata_lab.py) checks what unit tests cannot: real guests over the
VPC, the token reply's real IP TTL, silence for a disabled endpoint or a spoofed source over a
whole probe window, two accounts with the same CIDR.

Minimal use:
    server = MetadataServer(resolver, IdentitySigner.from_pem(key, cert),
                            TokenIssuer(secret), RateLimiter(rate=50, burst=100))
    srv = await server.serve(sock=bound_socket, listener="vpc-...")
"""

#: Where guests reach the service (the router namespace's address on each VPC bridge).
METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
