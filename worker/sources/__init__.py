"""Sources: the transports pushes arrive by (`http`, `mqtt`). Each module is named after its protocol."""
