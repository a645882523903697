"""The serving side: a bundle loaded and answered over HTTP or offline (docs/ARCHITECTURE.md)."""
