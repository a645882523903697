"""MACH training: the heads and their way into a bundle."""
