"""The commands of ``tinkex-trio`` (bench, demo, the management commands), behind ``tinkex_trio.cli``.

Private: nothing here is part of the library's API, and ``import tinkex_trio`` never imports it.
"""
