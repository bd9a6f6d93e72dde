"""Real servers as pytest plugins (`pytest_plugins = ["tests.plugins.postgres"]`): each
starts its own throw-away PostgreSQL or Mosquitto on a free port, never the machine's."""
