"""The simulated Tinker server."""
