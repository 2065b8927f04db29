"""The review web app (`siuo review --run R --serve`): Starlette + Jinja2 (autoescaped) + uvicorn.

Needs the `review` extra (`pip install -e ".[review]"`)."""

from generator.review_app.agreement import Agreement, agreement
from generator.review_app.app import create_app, serve

__all__ = ["Agreement", "agreement", "create_app", "serve"]
