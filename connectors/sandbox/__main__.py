"""python -m connectors.sandbox: run the local WhatsApp Cloud API stand-in and chat page."""
import argparse

from aiohttp import web

from connectors.sandbox.server import make_app, settings_from_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5006)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bot-url", default="http://localhost:5005/webhooks/whatsapp/webhook",
                        help="the bot's WhatsApp webhook, where the chat page's messages are posted")
    args = parser.parse_args()
    settings = settings_from_env()
    print(f"WhatsApp sandbox: chat page at http://{args.host}:{args.port}/ ; Graph API at http://{args.host}:{args.port}"
          f" ; posting webhooks to {args.bot_url}", flush=True)
    web.run_app(make_app(args.bot_url, settings["app_secret"], settings["phone_number_id"]),
                host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
