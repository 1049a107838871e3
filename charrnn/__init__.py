"""charrnn: learn to write like any text corpus, one character at a time.

Importing the package is cheap; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"
