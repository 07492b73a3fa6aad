"""The wire contract: topics, message models, the msgpack codec and the manifest schemas.

Nothing in this package does I/O.
"""
