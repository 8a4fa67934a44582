"""The HTTP layer: problem+json errors, middleware, pages."""
