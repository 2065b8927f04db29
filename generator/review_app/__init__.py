"""The review web app (`siuo review --run R --serve`): Starlette + Jinja2 (autoescaped) + uvicorn.

Needs the `review` extra (`pip install -e ".[review]"`)."""

from .agreement import cohen_kappa, fleiss_kappa
from .app import create_app, serve

__all__ = ["cohen_kappa", "create_app", "fleiss_kappa", "serve"]
