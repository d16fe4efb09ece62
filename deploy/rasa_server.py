"""Start Rasa for `make serve`: the token for its HTTP API is read from the environment here,
so it never appears on a command line (where `ps` would show it to every local user).

    python -m deploy.rasa_server [rasa run options...]

With RASA_ENABLE_API=1 the API is on and requires RASA_AUTH_TOKEN; otherwise it is off.
"""
from __future__ import annotations

import os
import sys

from cardsystem.preflight import api_enabled


def rasa_arguments(argv, env=os.environ):
    arguments = ["rasa", "run", *argv]
    if api_enabled(env):
        token = env.get("RASA_AUTH_TOKEN", "")
        if not token:
            raise SystemExit("RASA_ENABLE_API is on but RASA_AUTH_TOKEN is not set")
        arguments += ["--enable-api", "--auth-token", token]
    return arguments


def main() -> None:
    sys.argv = rasa_arguments(sys.argv[1:])
    from rasa.__main__ import main as rasa_main

    rasa_main()


if __name__ == "__main__":
    main()
