"""The operator's status page: `GET /` (the page, or the login form), `POST /login`,
`POST /logout`.

Auth: the admin token as a bearer header, or the login form, which sets an HttpOnly,
SameSite=Strict cookie (`COOKIE`) holding the token; `/logout` clears it. The page is drawn
(`worker.api.page_render`) from `status_body`, the same data as `/status`, so the two never
disagree; a sale looked up on it is shaped by the read API's `sale_detail`.
"""

from __future__ import annotations

from aiohttp import web

from worker import keys
from worker.api.format import sale_detail
from worker.api.page_render import login_page, render_page
from worker.api.status import status_body
from worker.sinks.base import SinkReader
from worker.web import bearer, token_ok

COOKIE = "possync_admin"
_HTML = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=_HTML)


def _authed(request: web.Request) -> bool:
    expected = request.app[keys.CONFIG].http.admin_token
    return token_ok(bearer(request) or request.cookies.get(COOKIE), expected)


async def index(request: web.Request) -> web.Response:
    """GET /: the status page (the login form when not authenticated)."""
    if not _authed(request):
        return _html(login_page(), status=401)
    app = request.app
    status = await status_body(app)
    spool = app[keys.SPOOL]
    by_rule: dict[str, dict[str, int]] = {}
    for sid, st in status["stores"].items():
        if st.get("quarantine"):
            # Counted in SQL over the whole quarantine (a listing would stop at a page).
            by_rule[sid] = await spool.quarantined.rules(sid)
    try:
        page = int(request.query.get("page", "1"))
    except ValueError:
        page = 1
    lookup = None
    store_id, sale_id = request.query.get("store"), request.query.get("sale", "").strip()
    if store_id and sale_id:
        store = next((s for s in app[keys.CONFIG].stores if s.id == store_id), None)
        found = None
        if store is not None:
            reader: SinkReader = app[keys.SINK]
            got = await reader.get_sale(store.id, sale_id[:256])
            found = sale_detail(got, store.source) if got is not None else None
        lookup = (store_id, sale_id, found)
    return _html(render_page(status, by_rule, page=page, lookup=lookup))


async def login(request: web.Request) -> web.Response:
    """POST /login (form: token): set the session cookie and go to the page."""
    form = await request.post()
    token = form.get("token")
    expected = request.app[keys.CONFIG].http.admin_token
    if not isinstance(token, str) or not token_ok(token, expected):
        return _html(login_page("That token is not the admin token."), status=401)
    resp = web.Response(status=303, headers={**_HTML, "Location": "/"})
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    return resp


async def logout(request: web.Request) -> web.Response:
    """POST /logout: clear the session cookie."""
    resp = web.Response(status=303, headers={**_HTML, "Location": "/"})
    resp.del_cookie(COOKIE, path="/")
    return resp
