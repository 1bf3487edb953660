"""Logging (one rich console), seeding, package paths."""
