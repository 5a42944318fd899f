"""The teaching aids: figures (``viz``), widgets and exercise checkers. Nothing below the notebooks imports
this package: it sits on top of the library and only reads from it."""

from .source import show_lines, show_source, source_text  # noqa: F401  (syntax-highlighted source in notebooks)
