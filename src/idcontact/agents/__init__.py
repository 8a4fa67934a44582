"""Agent login for the contact-centre console: credentials, second factor and sessions."""
