"""Front-end libraries the pages use, served by the engine from the Python packages that
ship them: nothing is loaded from a CDN (pages work offline, and no reader's browser
asks a third party for anything).

    /static/vendor/plotly.min.js   plotly.js, from the ``plotly`` wheel's package_data
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

router = APIRouter()


@cache
def plotly_js() -> Path | None:
    """The plotly.js bundle inside the installed ``plotly`` package (found, not
    imported: the Python side is not needed); None when it is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
async def plotly() -> FileResponse:
    path = plotly_js()
    if path is None:
        raise HTTPException(404, "plotly is not installed: pip install 'plotly>=5'")
    # a day: the file changes only with the package, and it is 4.8 MB
    headers = {"Cache-Control": "public, max-age=86400"}
    return FileResponse(path, media_type="text/javascript; charset=utf-8", headers=headers)
