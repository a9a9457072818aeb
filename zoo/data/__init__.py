"""The procedural captioned shapes dataset (shapes.py) and the pixel analyser that reads it back (analyser.py)."""
