"""The SQLite database: one writer connection, a few readers, versioned migrations."""
