"""The chat page `sia-edge serve` shows at GET /: static files shipped in the package (sia_edge/web), no CDN.

The page is a client like any other: it calls /v1/models and /v1/chat/completions (streamed, with logprobs)."""

from importlib.resources import files

PAGE = "index.html"
ASSETS = {"chat.js": "text/javascript", "chat.css": "text/css"}  # what GET /web/{name} serves, and nothing else


def asset(name: str) -> bytes:
    return files("sia_edge").joinpath("web", name).read_bytes()


def add_page_routes(app) -> None:
    """GET / and GET /web/{name}: left out of the OpenAPI document, which describes the API only."""
    from fastapi.responses import Response

    from .serve_api import ApiError

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(asset(PAGE), media_type="text/html; charset=utf-8")

    @app.get("/web/{name}", include_in_schema=False)
    async def web_asset(name: str):
        if name not in ASSETS:
            raise ApiError(404, f"no such file: /web/{name}", None, "not_found")
        return Response(asset(name), media_type=f"{ASSETS[name]}; charset=utf-8")
