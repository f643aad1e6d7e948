"""The storage node: Kumo's NBD volume service (issue 10).

Each volume is a qcow2 file in the node's state directory, served over NBD by one
qemu-storage-daemon that runs under agent/supervisor.py and is driven over its QMP socket (with
per-host TLS, KUMO_STORAGE_NBD_TLS_DIR: one daemon per host, each admitting only that host's
certificate; docs/security.md "Storage access").
`backend.NbdBackend` is the VolumeBackend (agent/drivers/volumes.py); `daemon.py` runs and
talks to the daemon, `qmp.py` is the QMP client, `wanted.py` the persisted export set and
`files.py` the volume files. `app.py` serves agent/contract/storage_v1.py over any backend (with
the loop that keeps exports served), `settings.py` and `__main__.py` run it
(`python -m agent.storage_node`).
"""
