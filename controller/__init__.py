"""Kumo controller: the REST API, desired state (database), scheduler, reconciler and CLI."""
