"""Performance tooling, GPU only: the whole-layer benchmark, the config tuner, floors and timing.

Nothing here launches a kernel directly: every timed step comes from :func:`moe_lib.kernels.experts.plan`.
"""
