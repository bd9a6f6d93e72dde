"""The route table: every route the app serves, registered in one place.

Handlers stay in their rooms (the push in `worker.sources.http`, backfill and file uploads
in `worker.sources`, the rest in `worker.api`); this module only says which path and
method reach which handler. aiohttp matches in registration order, so the order here is
the order the app has always had. `GET` routes answer `HEAD` too.
"""

from __future__ import annotations

from aiohttp import web

from worker.api import admin, page, reads, status
from worker.api.openapi import openapi_json
from worker.sources.backfill import backfill
from worker.sources.http import push
from worker.sources.inbox_upload import upload


def add_routes(app: web.Application) -> None:
    """Register every route of the app."""
    r = app.router
    # Sources: what comes in.
    r.add_post("/v1/push/{source}/{store}", push)
    # Health and status.
    r.add_get("/healthz", status.healthz)
    r.add_get("/readyz", status.readyz)
    r.add_get("/status", status.status)
    r.add_get("/metrics", status.metrics)
    # Reads of one store.
    r.add_get("/v1/stores/{store}/customers/{id}", reads.get_customer)
    r.add_get("/v1/stores/{store}/products/{id}", reads.get_product)
    r.add_get("/v1/stores/{store}/spool", reads.get_spool)
    r.add_get("/v1/stores/{store}/sales", reads.sales_log)
    r.add_get("/v1/stores/{store}/sales/{id}", reads.get_sale)
    r.add_get("/v1/stores/{store}/report", reads.sales_report)
    r.add_get("/v1/stores/{store}/triggers", reads.list_triggers)
    # Admin.
    r.add_post("/v1/admin/commit", admin.admin_commit)
    r.add_get("/v1/admin/stores/{store}/preview", admin.admin_preview)
    r.add_post("/v1/admin/stores/{store}/{action:pause|resume}", admin.admin_pause)
    r.add_get("/v1/admin/quarantine", admin.quarantine_list)
    r.add_post("/v1/admin/quarantine/release", admin.quarantine_release_rule)
    r.add_post("/v1/admin/quarantine/{id}/release", admin.quarantine_release)
    r.add_delete("/v1/admin/quarantine/{id}", admin.quarantine_delete)
    r.add_get("/v1/admin/audit", admin.audit)
    # Bulk sources: history and export files.
    r.add_post("/v1/backfill/{source}/{store}", backfill)
    r.add_post("/v1/files/{source}/{store}", upload)
    # The operator's page.
    r.add_get("/", page.index)
    r.add_post("/login", page.login)
    r.add_post("/logout", page.logout)
    # The API's description.
    r.add_get("/openapi.json", openapi_json)
