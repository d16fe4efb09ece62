"""Running cardcare in production: `make serve` (deploy.serve), the action server's launcher
(deploy.action_server) and the nginx configuration that is the only door from the internet."""
