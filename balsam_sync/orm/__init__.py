"""The model layer: instances, their fields, managers and lazy queries (Django's shape)."""
