"""Kumo machine-image (AMI) builder: recipes, disk assembly, manifests and the image cache.

Public API lives in :mod:`images.builder` (list_recipes, build, cached_manifest, Manifest).
"""
