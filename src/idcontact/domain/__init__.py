"""The domain: pure Python rules with no web, database or protocol imports."""
