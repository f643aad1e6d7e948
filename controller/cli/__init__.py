"""The `kumo` command-line client: a thin typer front end over the REST API (docs/api.md).

It talks to the controller only over HTTP (agent.contract.transport builds clients, so `unix:`
URLs work) and imports nothing else from controller/. The lazily imported `image` and `lab`
sub-apps drive the local image builder and lab launcher instead of the API.
"""
