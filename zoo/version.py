"""The zoo's version, at the bottom so the converter (whose generated headers carry it) and the build can read it."""
__version__ = "0.1.0"
