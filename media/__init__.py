"""Data plane: packets, codecs and audio analysis. Never imports ``engine``."""
