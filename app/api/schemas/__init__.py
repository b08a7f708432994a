"""Request and response shapes of the native JSON API, one module per resource.

Import from the resource's module (`from app.api.schemas.runs import RunRead`); this file
re-exports nothing.
"""
