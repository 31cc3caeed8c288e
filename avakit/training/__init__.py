"""Shards -> a run folder: `fit` drives epochs of `engine` over `loader` batches; `checkpoint`,
`rundir` and `telemetry` write (and read back) the run folder; `evaluate` and `features` reuse them.
"""
