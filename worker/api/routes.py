"""The route table: every route the app serves, registered in one place.

Handlers stay in their rooms (the push in `worker.sources.http`, backfill and file uploads
in `worker.sources`, the rest in `worker.api`); this module only says which path and
method reach which handler. aiohttp matches in registration order, so the order here is
the order the app has always had. `GET` routes answer `HEAD` too.

Each route also says how it meets `Expect: 100-continue` (worker.web): the push, upload and
quarantine-release routes only once the caller is authenticated and the body is read, the
backfill only for the admin token, the rest at once; any other expectation is a 417 JSON.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from worker.api import admin, page, reads, status
from worker.api.openapi import openapi_json
from worker.sources.backfill import backfill
from worker.sources.http import push
from worker.sources.inbox_upload import upload
from worker.web import expect_admin, expect_after_credentials, expect_now

PUSH_PATH = "/v1/push/{source}/{store}"


def add_routes(app: web.Application) -> None:
    """Register every route of the app."""
    r = app.router
    get = partial(r.add_get, expect_handler=expect_now)
    post = partial(r.add_post, expect_handler=expect_now)
    post_authed = partial(r.add_post, expect_handler=expect_after_credentials)
    # Sources: what comes in.
    post_authed(PUSH_PATH, push)
    # Health and status.
    get("/healthz", status.healthz)
    get("/readyz", status.readyz)
    get("/status", status.status)
    get("/metrics", status.metrics)
    # Reads of one store.
    get("/v1/stores/{store}/customers/{id}", reads.get_customer)
    get("/v1/stores/{store}/products/{id}", reads.get_product)
    get("/v1/stores/{store}/spool", reads.get_spool)
    get("/v1/stores/{store}/sales", reads.sales_log)
    get("/v1/stores/{store}/sales/{id}", reads.get_sale)
    get("/v1/stores/{store}/report", reads.sales_report)
    get("/v1/stores/{store}/triggers", reads.list_triggers)
    # Admin.
    post("/v1/admin/commit", admin.admin_commit)
    get("/v1/admin/stores/{store}/preview", admin.admin_preview)
    post("/v1/admin/stores/{store}/{action:pause|resume}", admin.admin_pause)
    get("/v1/admin/quarantine", admin.quarantine_list)
    post("/v1/admin/quarantine/release", admin.quarantine_release_rule)
    post_authed("/v1/admin/quarantine/{id}/release", admin.quarantine_release)
    r.add_delete("/v1/admin/quarantine/{id}", admin.quarantine_delete, expect_handler=expect_now)
    get("/v1/admin/audit", admin.audit)
    # Bulk sources: history and export files.
    r.add_post("/v1/backfill/{source}/{store}", backfill, expect_handler=expect_admin)
    post_authed("/v1/files/{source}/{store}", upload)
    # The operator's page.
    get("/", page.index)
    post("/login", page.login)
    post("/logout", page.logout)
    # The API's description.
    get("/openapi.json", openapi_json)
