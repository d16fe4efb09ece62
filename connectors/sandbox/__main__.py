"""python -m connectors.sandbox: run the local WhatsApp Cloud API stand-in and chat page."""
import argparse

from aiohttp import web

from connectors.sandbox.server import approve_templates_from_env, make_app, settings_from_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5006)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bot-url", default="http://localhost:5005/webhooks/whatsapp/webhook",
                        help="the bot's WhatsApp webhook, where the chat page's messages are posted")
    parser.add_argument("--approve-templates", action="store_true", default=approve_templates_from_env(),
                        help="approve message templates as soon as they are submitted (also SANDBOX_APPROVE_TEMPLATES=1)")
    args = parser.parse_args()
    settings = settings_from_env()
    print(f"WhatsApp sandbox: chat page at http://{args.host}:{args.port}/ ; Graph API at http://{args.host}:{args.port}"
          f" ; posting webhooks to {args.bot_url}" + (" ; templates approved on submission" if args.approve_templates else ""),
          flush=True)
    web.run_app(make_app(args.bot_url, settings["app_secret"], settings["phone_number_id"],
                         approve_templates=args.approve_templates),
                host=args.host, port=args.port, print=None,
                shutdown_timeout=3)  # (aiohttp's 60 s: a handler still redelivering to a stopped bot held the exit)


if __name__ == "__main__":
    main()
