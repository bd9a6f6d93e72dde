"""The HTTP API beside the pushes: health, status, reads, admin, the status page, OpenAPI.

The contract every handler here keeps:

* **Who may call what.** `/healthz` and `/openapi.json` need no credential; everything else
  here needs the admin token (`Authorization: Bearer`; the status page also takes its login
  cookie). Pushes and file uploads (`worker.sources`) take the store's own token instead.
* **Errors.** A precise status and `{"error", "field"}` naming the parameter or field and
  the rule it broke, never the value (`worker.web` renders every `PossyncError`); an
  unknown store is a 404 naming `store`.
* **Money** is shown as a string at the currency's minor unit (`worker.money.show`:
  "0.00", "1200" for JPY), quantities exactly without trailing zeros; the exact canonical
  record the POS sent stays under `record` (`worker.api.format`).
* **Lists are paged**: `limit` (1..1000, default 100), a signed keyset `cursor` bound to the
  list and its filters, `next` when another page exists, never a silent cap
  (`worker.api.pages`).

Rooms: `status` (health, /status, metrics), `reads` (one store's customers, products,
spool, Sales Log, sale, report, triggers), `admin` (commit, preview, pause, quarantine,
audit), `page` + `page_render` (the operator's page), `params` (request parameters),
`format`, `pages`, `openapi` + `openapi_schemas`, and `routes` (the app's one route table).
"""
