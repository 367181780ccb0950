"""``adctl serve``: the HTTP control API (FastAPI), its authentication, authorisation and
audit log. ``create_app(ApiConfig(...))`` builds the application.
"""
