"""The data layer: raw Yambda parquet -> prepared arrays -> batches (see each module's docstring)."""
