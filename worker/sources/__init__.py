"""Transports that feed the intake: HTTP, MQTT, drop folders."""
