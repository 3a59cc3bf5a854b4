"""quickdraft's OpenAI-compatible server: `quickdraft serve`, or `create_app(engine, config)` for uvicorn.

One file per concept:
    app.py         the routes and the HTTP checks (API key, body size, model name)
    guard.py       what a web page may not send (foreign Origin or Host, a body that is not JSON)
    schemas.py     the request bodies (strict types, unknown fields ignored)
    prepare.py     a request -> engine streams (prompt, limits, sampling); every 400 comes from here
    scheduler.py   the queue in front of the engine and the worker thread that runs it
    formatting.py  engine output -> OpenAI's JSON and stream chunks
    errors.py      OpenAI-shaped errors
    metrics.py     /metrics (Prometheus) and the running totals of /v1/quickdraft/status
    cli.py         `quickdraft serve` and `quickdraft config show`
Configuration lives in quickdraft.config.
"""


def create_app(engine, config):
    from quickdraft.server.app import create_app as _create_app

    return _create_app(engine, config)


__all__ = ["create_app"]
