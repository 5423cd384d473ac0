"""Backends execute one exported graph. See :mod:`edgert.runtime.backends.base`."""
