"""The validating admission webhook: pure checks, the HTTPS server, and its certificates."""
