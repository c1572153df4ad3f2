"""Tramontane router: the gRPC gateway that authenticates tenants and routes to healthy pools."""
