"""`python -m controller.storage_node_cert --state-dir DIR --node-id sn1 --address 100.64.0.250
--out OUT`: issue a storage node's NBD server certificate from the cloud CA (run where the CA
key is, the controller's state dir) into OUT (ca-cert.pem, server-cert.pem, server-key.pem), the
directory the node's KUMO_STORAGE_NBD_TLS_DIR names (docs/deploy.md, docs/security.md "Storage
access"). Copy OUT to the storage node over a trusted channel; the key never needs to exist
anywhere else afterwards.

This is the first issue (and the way to change the node's addresses). Renewals need no admin:
with KUMO_STORAGE_MTLS the leader replaces the certificate over the node's API before it
expires (controller/storage_cert_renewal.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.errors import InvalidParameter
from controller.services.cloud_ca import STORAGE_CERT_DAYS, storage_node_files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.storage_node_cert",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", required=True, type=Path,
                    help="the controller's state dir (holds cloud-ca.key)")
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--address", required=True, action="append",
                    help="an address hosts dial the node's NBD servers on (repeatable)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--days", type=float, default=STORAGE_CERT_DAYS)
    args = ap.parse_args(argv)
    if not (args.state_dir / "cloud-ca.key").is_file():
        print(f"error: {args.state_dir} has no cloud CA (cloud-ca.key)", file=sys.stderr)
        return 2
    try:
        issued = storage_node_files(args.state_dir, args.node_id, args.address, args.out,
                                    args.days)
    except InvalidParameter as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"issued serial {issued.serial:x}, valid until {issued.not_after:%Y-%m-%d}, "
          f"into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
