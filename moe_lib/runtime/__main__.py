"""``python -m moe_lib.runtime``: where kernels run, and the versions (a package's ``__main__``, so that runpy
does not warn about moe_lib.runtime being imported by moe_lib first)."""

from . import format_report

print(format_report())
