"""Auth plugins: run a wallet protocol, deliver signed and encrypted attributes."""
