"""cardcare's custom actions, one module per capability; shared helpers in `common`."""
