"""ID Bellen: the phone channel (link codes, the PBX adapter and the call logic)."""
