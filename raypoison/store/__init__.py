"""Where rows go and come back from: the row schema and builders, storage locations (local or
object store), the Parquet sink, reading and de-duplicating results, and compaction. No torch."""
