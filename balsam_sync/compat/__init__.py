"""Upstream's API beyond the models: ApplicationDefinition, Session, site_config."""
