# cardcare: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
RASA        := $(VENV)/bin/rasa
STAMP       := $(VENV)/.installed-$(shell cat requirements.txt requirements-nodeps.txt .python-version | cksum | cut -d' ' -f1)
MODEL       := models/cardcare.tar.gz
TRAIN_DATA  := config.yml domain.yml $(shell find data -name '*.yml' 2>/dev/null)
DB          := var/cardcare.db
ACTION_PORT ?= 5055
RASA_PORT   ?= 5005
SANDBOX_PORT ?= 5006
PERSONA     ?= 919800000002
# Python 3.10 for Rasa 3.6: pyenv's (per .python-version) if present, else python3.10.
PYTHON      ?= $(shell pyenv which python 2>/dev/null || command -v python3.10 || command -v python3)

export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export SQLALCHEMY_SILENCE_UBER_WARNING ?= 1

.PHONY: help install run serve nginx shell reminders train test test-unit test-rasa seed reseed bench nlu-report clean browser

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt .python-version
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 10), "Rasa 3.6 needs Python 3.10, got " + sys.version' \
		|| { echo "Install Python 3.10 (e.g. pyenv install 3.10.13) or pass PYTHON=/path/to/python3.10"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv and install the pinned requirements

$(MODEL): $(STAMP) $(TRAIN_DATA)
	$(RASA) telemetry disable >/dev/null 2>&1 || true
	$(PY) -m bench.timing

train: $(STAMP) ## train the model (Rasa's cache skips unchanged parts; time recorded for make bench)
	$(RASA) telemetry disable >/dev/null 2>&1 || true
	$(PY) -m bench.timing

$(DB): | $(STAMP)
	$(PY) -m cardsystem.seed --if-empty

seed: $(DB) ## create and fill the embedded card system (once)

reseed: $(STAMP) ## recreate the card system's demo data from scratch (and the channel's state that refers to it)
	rm -f var/channel.db
	$(PY) -m cardsystem.seed

run: $(STAMP) $(MODEL) $(DB) ## the developers' demo on 127.0.0.1: action server, Rasa with REST and API (:5005), WhatsApp sandbox (:5006), templates approved there
	@echo "Starting the action server (:$(ACTION_PORT)), Rasa (:$(RASA_PORT)) and the WhatsApp sandbox (:$(SANDBOX_PORT))."
	@$(PY) -m cardsystem.agents demo
	@$(PY) -m cardsystem.requests.proof dev-pair
	@echo ">>> Chat page: http://localhost:$(SANDBOX_PORT)/   Agent console: http://localhost:$(RASA_PORT)/webhooks/whatsapp/agents   (Ctrl-C stops everything)"
	@umask 077; sed 's|localhost:5055|127.0.0.1:$(ACTION_PORT)|' endpoints.yml > var/endpoints.run.yml; \
	export WHATSAPP_API_BASE=$${WHATSAPP_API_BASE:-http://127.0.0.1:$(SANDBOX_PORT)} \
		CARDCARE_FILES_BASE_URL=$${CARDCARE_FILES_BASE_URL:-http://127.0.0.1:$(RASA_PORT)/webhooks/files/statements} \
		CARDCARE_PAYMENT_BASE_URL=$${CARDCARE_PAYMENT_BASE_URL:-http://127.0.0.1:$(RASA_PORT)/webhooks/pay/card}; \
	$(PY) -m deploy.action_server --host 127.0.0.1 --port $(ACTION_PORT) & actions=$$!; \
	$(PY) -m connectors.sandbox --host 127.0.0.1 --port $(SANDBOX_PORT) --bot-url http://127.0.0.1:$(RASA_PORT)/webhooks/whatsapp/webhook --approve-templates & sandbox=$$!; \
	( for i in $$(seq 30); do sleep 1; $(PY) -m cardsystem.reminders templates submit >var/templates.log 2>&1 && break; done ) & \
	trap 'kill $$actions $$sandbox 2>/dev/null' EXIT INT TERM; \
	$(RASA) run --enable-api -i 127.0.0.1 --port $(RASA_PORT) -m $(MODEL) --credentials credentials.yml --endpoints var/endpoints.run.yml

serve: $(STAMP) ## production on one box: preflight, locked action server, Rasa (WhatsApp only), nginx on PUBLIC_PORT
	@$(PY) -m deploy.serve --check
	@$(MAKE) --no-print-directory $(MODEL)
	@$(PY) -m deploy.serve

reminders: $(STAMP) ## the reminders' command with make run's settings (same ports): make reminders ARGS="run --now 2026-12-05T10:00"
	@export WHATSAPP_API_BASE=$${WHATSAPP_API_BASE:-http://127.0.0.1:$(SANDBOX_PORT)} \
		CARDCARE_PAYMENT_BASE_URL=$${CARDCARE_PAYMENT_BASE_URL:-http://127.0.0.1:$(RASA_PORT)/webhooks/pay/card}; \
	$(PY) -m cardsystem.reminders $(ARGS)

shell: $(STAMP) $(MODEL) $(DB) ## talk to the bot in the terminal as a demo persona (PERSONA=<number>)
	@umask 077; sed 's|localhost:5055|127.0.0.1:$(ACTION_PORT)|' endpoints.yml > var/endpoints.run.yml; \
	$(PY) -m deploy.action_server --host 127.0.0.1 --port $(ACTION_PORT) >var/actions.log 2>&1 & actions=$$!; \
	trap 'kill $$actions 2>/dev/null' EXIT INT TERM; \
	$(RASA) shell -m $(MODEL) --conversation-id $(PERSONA) --endpoints var/endpoints.run.yml

test: $(STAMP) $(MODEL) browser nginx ## run every test: pytest suites, data validation, rasa test stories, WhatsApp end to end
	$(PY) -m pytest tests

browser: ## install Debian's Chromium for the chat page's browser test (needs root; skipped otherwise)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser test..."; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	else echo "No chromium and no root: the chat page's browser test will be skipped (apt-get install chromium)."; fi

nginx: ## install Debian's nginx, the public door of make serve (needs root; its tests are skipped otherwise)
	@if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's nginx-light for make serve..."; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }; \
	else echo "No nginx and no root: make serve's door tests through nginx will be skipped (apt-get install nginx-light)."; fi

test-unit: $(STAMP) ## the fast suites only (no trained model needed)
	$(PY) -m pytest tests -m "not model"

bench: $(STAMP) $(MODEL) ## WhatsApp path against stock Rasa (throughput, latency, CPU, conversation length, 1 vs 2 workers), REST latency, faults mid-burst, reminders
	$(PY) -m bench.scale_bench $(BENCH_ARGS)
	$(PY) -m bench.rest_bench
	$(PY) -m bench.webhook_bench
	$(PY) -m bench.faults
	$(PY) -m bench.faults --store postgres --workers 2
	$(PY) -m bench.reminders_bench

nlu-report: $(STAMP) $(MODEL) ## NLU figures on our held-out split and on the CLINC150 card benchmark
	$(PY) -m bench.nlu_report

clean: ## remove the venv, models, caches and local data
	rm -rf $(VENV) .rasa models/*.tar.gz var/*.db var/statements results
