"""DigiD, the Dutch government login: SAML 2.0 (directly or through a broker), an OpenID
Connect broker variant, and the BRP lookup (Haal Centraal) for attributes beyond the BSN."""
