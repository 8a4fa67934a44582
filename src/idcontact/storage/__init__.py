"""Storage: the database (SQLAlchemy async), the key store for data keys, and the vault."""
