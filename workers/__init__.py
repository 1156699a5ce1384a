"""The engine room on the worker side: fetch + collate, the child loop, process lifecycle.

Users never import this package; ``loader`` is the public face.
"""
