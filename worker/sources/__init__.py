"""Sources: the transports pushes arrive by, each module named after its protocol.

Contract: a source turns what arrives (an HTTP push `http`, an MQTT message `mqtt`, a
drop-folder file `inbox`, an upload `inbox_upload`, a backfill stream `backfill`) into one
`worker.intake.Envelope` and calls `Ingest.ingest(envelope)`; it acknowledges (202, PUBACK,
file moved to processed/, 200) only after that returned, i.e. once the records are durable.
Credentials are the source's to check before the body is read (`Envelope.authorized`).
`mqtt_client` is the broker connection the `mqtt` policy drives.
"""
