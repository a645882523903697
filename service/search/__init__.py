"""The engine and the one path from query text to ranked products (encoder, pipeline, batcher)."""
