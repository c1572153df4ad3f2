"""The `tramontane` command line: one CLI for platform teams and tenants."""
