"""tinkex_trio: a Trio-native client for the Tinker fine-tuning API."""

from tinkex_trio._version import __version__

__all__ = ["__version__"]
