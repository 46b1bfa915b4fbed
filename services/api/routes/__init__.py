"""The API's routers, one module per resource; :mod:`services.api.app` mounts them."""
