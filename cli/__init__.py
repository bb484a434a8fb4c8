"""Command lines: the stage entry point DVC runs (`python -m tasks.<stage>`), logging and one-line errors."""
