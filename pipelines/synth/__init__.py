"""Data synthesis for the lines: labelled recordings made by our own generators."""
