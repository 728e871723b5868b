"""A run's storage and identity: paths, fsspec storage, the RunStore, Parquet schemas,
the records tasks hand each other, the lease, run.json, and export.
"""
