# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000
# localstripe for `make run` (marketplace/config.py: the default STRIPE_API_BASE outside production)
STRIPE_PORT ?= 8420
export FLASK_APP := wsgi

.PHONY: run test setup setup-dev browser-deps migrate seed demo-seed serve lint typecheck bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python  ## install the app and its demo Stripe (embedded defaults: SQLite, local files, in-process jobs, localstripe)
	$(BIN)/pip install --quiet -e '.[demo]'

setup-dev: $(BIN)/python  ## install the app with everything the tests need
	$(BIN)/pip install --quiet -e '.[dev,demo,s3]'

migrate: setup  ## apply database migrations (SQLite under var/ unless DATABASE_URL is set)
	$(BIN)/flask db upgrade

seed: migrate demo-seed  ## demo data; prints the demo sign-ins (kept in var/demo-credentials.txt)

demo-seed:  # the seed alone; with localstripe running (make run) it also saves a card and pays a booking
	$(BIN)/flask demo seed

serve:
	@echo ""
	@echo "  API:         http://$(HOST):$(PORT)/api/v1"
	@echo "  API docs:    http://$(HOST):$(PORT)/api/docs   (OpenAPI: /api/openapi.json)"
	@echo "  Console:     http://$(HOST):$(PORT)/console"
	@echo "  Agency app:  http://$(HOST):$(PORT)/agency"
	@echo "  E-mail:      http://$(HOST):$(PORT)/dev/mail   (what the app sent: codes and links; development only)"
	@echo ""
	PUBLIC_BASE_URL=$${PUBLIC_BASE_URL:-http://$(HOST):$(PORT)} $(BIN)/gunicorn --bind $(HOST):$(PORT) --worker-class gthread --workers 2 --threads 4 \
		--access-logfile - --access-logformat '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms' 'wsgi:app'

# localstripe (devtools/with_localstripe.py) runs beside the seed and the server and stops with them
run: migrate  ## set up, migrate, start localstripe, seed demo data and serve on http://127.0.0.1:5000
	@mkdir -p $${VAR_DIR:-var}
	$(BIN)/python -m devtools.with_localstripe --port $(STRIPE_PORT) --store $${VAR_DIR:-var}/localstripe.pickle \
		--webhook-url http://$(HOST):$(PORT)/api/v1/payments/stripe/webhook \
		-- $(MAKE) --no-print-directory demo-seed serve

browser-deps:  ## Debian's Chromium for the browser tests (installed when missing and we are root)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

test: setup-dev browser-deps  ## install test needs and run the suite (SQLite, in-process jobs)
	$(BIN)/pytest -q -p no:cacheprovider

lint: setup-dev  ## ruff, the import contracts between areas (docs/architecture.md), mypy
	$(BIN)/ruff check marketplace agency_app tests bench migrations devtools
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/mypy

BENCHES := bench_images bench_image_pool bench_crypto bench_reads bench_bookings bench_search bench_logins bench_audit

# every bench runs even after one misses a target; the target fails at the end if any did
bench: setup-dev  ## benchmarks: medians of alternating rounds against a same-run baseline; fails on a missed target
	@status=0; for b in $(BENCHES); do $(BIN)/python bench/$$b.py $(BENCH_ARGS) || status=1; done; exit $$status

bench-quick: setup-dev  ## the benchmarks on small data, fewer and shorter rounds, report only (never fails)
	$(BIN)/python bench/bench_images.py --rounds 3 --per-round 2 --report-only
	$(BIN)/python bench/bench_crypto.py --rounds 3 --cell-seconds 0.05 --report-only
	$(BIN)/python bench/bench_reads.py --rounds 3 --duration 3 --vehicles 500 --customers 50 --report-only
	$(BIN)/python bench/bench_bookings.py --rounds 3 --duration 3 --vehicles 1000 --customers 16 --report-only
	$(BIN)/python bench/bench_search.py --scale 0.05 --rounds 3 --duration 3 --query-calls 100 --report-only

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
