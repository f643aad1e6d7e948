"""`python -m agent`: run one host agent (HTTP API + reconcile loop + heartbeat) under uvicorn.

Listens on KUMO_AGENT_LISTEN (`unix:/path.sock` or `host:port`). SIGTERM/SIGINT stop the
server; the lifespan stops the loop between steps and leaves every guest as it is.
"""
from __future__ import annotations

import logging
import os
import sys

from agent.app import create_app
from agent.serving import serve
from agent.settings import AgentSettings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("KUMO_AGENT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AgentSettings()
    return serve(create_app(settings), settings)


if __name__ == "__main__":
    sys.exit(main())
