"""Thin HTTP routers, one per resource; rules live in controller.services."""
