"""Importers and exporters of foreign checkpoints."""
