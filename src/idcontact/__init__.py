"""ID Contact: prove who you are to a contact-centre agent, disclosing only what the topic needs."""

__version__ = "0.1.0"

__all__ = ["__version__"]
