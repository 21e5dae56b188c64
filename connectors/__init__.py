"""The edges of fusionline: typed records, the recording format, sources and sinks.

Nothing here imports ``model`` or ``pipelines``: connectors see bytes, files and sockets.
"""
