"""Every figure of the notebooks, in one namespace: ``from moe_lib.teach import viz; viz.routing_heatmap(...)``.

One module per subject: :mod:`.routing` (notebooks 00, 01, 03, 04), :mod:`.kernels` (05, 06), :mod:`.perf` (07),
:mod:`.parallel` (08, 09), :mod:`.layer` (10) and :mod:`.quant` (11). :mod:`.style` is the one place for
colours — the same expert, rank or implementation has the same colour in every figure — and for the rules the
modules share.

Every function checks its inputs (a bad one raises a ValueError or TypeError that names it) and returns a
:class:`matplotlib.figure.Figure` built without ``pyplot``: nothing is registered in pyplot's global figure
list, nothing is shown, nothing leaks between calls. In a notebook, end the cell with the returned figure to
show it exactly once; in a script, call ``fig.savefig(...)``. The same inputs always draw the same picture.
"""

from .kernels import *  # noqa: F403
from .layer import *  # noqa: F403
from .parallel import *  # noqa: F403
from .perf import *  # noqa: F403
from .programs import *  # noqa: F403
from .puzzles import *  # noqa: F403
from .quant import *  # noqa: F403
from .routing import *  # noqa: F403
from .style import *  # noqa: F403
