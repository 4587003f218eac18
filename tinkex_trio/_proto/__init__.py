"""The protobuf wire codec (protocol §5).

The ``.proto``, its generated module and the converters to and from ``tinkex_trio.types``.
Private: import from :mod:`tinkex_trio._proto._codec`.
"""
