"""The data layer: manifests -> samples -> batches."""
