"""MACH at serving time: hash family, n-gram features, bucket decoders and the heads' session."""
