"""The web console: server-rendered pages under ``/ui/``, served by the ``api`` function.

Pages read through the same account-scoped code as the JSON routes; charts are inline SVG
drawn by the templates; the only script is the console's own static file. See
``web.py`` for the request plumbing, ``pages.py`` and ``evaluation_page.py`` for the pages,
``session.py`` for how a browser signs in.
"""

from __future__ import annotations

import flask


def mount(app: flask.Flask) -> None:
    """Serve the console from ``app`` (which holds the services in ``extensions["assay"]``)."""
    from functions.console import evaluation_page, pages  # noqa: F401  (their views join the blueprint)
    from functions.console.web import bp

    app.register_blueprint(bp)
