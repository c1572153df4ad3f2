"""Per-tenant limits in the request path: rates, concurrency, long budgets, fair share, and the
split of global rates across router replicas."""
