"""Comm plugins (channels): receive attributes and connect the resident to an agent."""
