"""PostgreSQL storage: the pool, migrations, the embedded server and the repositories."""
