"""Device meshes, logical-axis sharding rules and multi-host helpers.

Imports: runtime only.
"""
