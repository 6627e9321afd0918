"""Database access: table definitions, the async engine factory and migrations."""
