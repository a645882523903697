"""The HTTP API: routes, bodies, the one error shape, auth, admission; see app.py for wiring."""
