"""Fuzz targets for the loaders; see README.md."""
