"""A native IRMA (Yivi) verifier: schemes, Idemix disclosure proofs, attribute decoding.

Implemented from the published protocol descriptions (docs/irma.md), not from irmago or gabi
code; the test vectors from irmago's test suite prove byte compatibility. No web framework is
imported here: the crypto and protocol code stays testable on its own.
"""
