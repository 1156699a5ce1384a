"""The engine room between processes: shared-memory slots, typed messages, sockets.

Users never import this package; ``loader`` is the public face.
"""
