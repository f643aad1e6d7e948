"""The agent's wire contract: the only part of agent/ the controller may import.

Versions live in their own modules (v1.py); additive changes are named extensions listed in
v1.EXTENSIONS, breaking ones make a v2 module beside v1.
"""
