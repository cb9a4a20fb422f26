"""Data: manifests, media decoding, embedded datasets and public-dataset converters."""
