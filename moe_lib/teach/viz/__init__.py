"""Every figure of the notebooks, in one namespace: ``from moe_lib.teach import viz; viz.routing_heatmap(...)``.

One module per subject; colours and shared drawing rules live in :mod:`.style`.
"""

from .kernels import *  # noqa: F403
from .layer import *  # noqa: F403
from .parallel import *  # noqa: F403
from .perf import *  # noqa: F403
from .routing import *  # noqa: F403
