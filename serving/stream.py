"""Streaming text over HTTP: the champion's tokens as they are produced, as server-sent events.

`mlflow models serve` answers a request only when the whole output is ready. This endpoint loads a registered text
generator through MLflow (`models:/NAME@alias`, the consumers' code path) and streams its `predict_stream`:

    POST /stream  {"inputs": [{"prompt": "...", ...}]}   (one row; the fields and checks of /invocations)
    -> 200 text/event-stream: `data: {"text": "<piece>"}` per piece, then `event: done` / `data: {}`
    -> 400 application/json {"error_code": "INVALID_PARAMETER_VALUE", "message": "<one line>"} for a bad request
    GET /ping -> 200

Joined, the pieces are the text `/invocations` gives the same row and seed.

Run: `make serve-stream` (the champion on port 5003), or `python -m serving.stream --model models:/NAME@alias
--port 5003` with MLFLOW_TRACKING_URI set (e.g. sqlite:///mlflow.db).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def app_for(model: Any):
    """The Starlette app serving `model` (a TextGeneratorModel with its context loaded)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    from serving.requests import BadRequest

    def bad(message: str) -> JSONResponse:
        return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": message}, status_code=400)

    async def stream(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            return bad("the body is not JSON; send {\"inputs\": [{\"prompt\": ...}]}")
        rows = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return bad("the body must be {\"inputs\": [{\"prompt\": ...}]}: one row, a JSON object")
        pieces = model.predict_stream(None, rows)
        try:
            first = next(pieces, None)  # the checks run before the first piece: a bad row is a 400, not a stream
        except BadRequest as exc:
            return bad(exc.message)

        def events():
            if first is not None:
                yield f"data: {json.dumps({'text': first})}\n\n"
            for piece in pieces:
                yield f"data: {json.dumps({'text': piece})}\n\n"
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def ping(request: Request):
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/stream", stream, methods=["POST"]), Route("/ping", ping, methods=["GET"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.stream", description=(__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a registered text generator, e.g. models:/text-generator@champion")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5003)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import mlflow
    import uvicorn

    model = mlflow.pyfunc.load_model(args.model).unwrap_python_model()
    if not hasattr(model, "predict_stream") or not hasattr(model, "tokenizer"):
        raise SystemExit(f"error: serving.stream: {args.model} is not a text generator")
    log.info("streaming %s on http://%s:%d/stream", args.model, args.host, args.port)
    uvicorn.run(app_for(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
