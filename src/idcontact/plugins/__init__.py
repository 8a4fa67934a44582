"""Plugins: auth methods (``idcontact.auth``) and comm methods (``idcontact.comm``)."""
