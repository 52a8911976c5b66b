"""Storage: tables, engine, bulk loading, migrations."""
