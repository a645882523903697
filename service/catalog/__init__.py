"""Catalog changes without retraining: snapshot, overlay, ordering, storage and routes."""
