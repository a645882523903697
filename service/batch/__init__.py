"""Offline batch scoring: request files in, one JSONL answer per request out, resumable."""
