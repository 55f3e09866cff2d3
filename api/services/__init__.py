"""Use-cases. Routes and background tasks call these; they use domain, db, storage and backends."""
