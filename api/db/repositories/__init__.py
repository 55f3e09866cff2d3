"""Tenant-scoped data access, one module per aggregate."""
