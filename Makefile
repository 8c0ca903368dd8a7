# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo run test test-all soak lint typecheck bench mosquitto rabbitmq nats-server nats-cluster browser clean

DEMO_STAMP := $(VENV)/.installed-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The demo extra adds what only the demo needs (an embedded MQTT broker for machines without mosquitto).
$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/pip || { echo "make demo: creating a virtual environment in $(VENV)/"; $(PYTHON) -m venv $(VENV); }
	@echo "make demo: installing emsedge and what the demo needs into $(VENV)/ (emsedge[demo]; no test tools)..."
	@$(BIN)/pip install -q -e '.[demo]'
	@touch $(DEMO_STAMP)
	@echo "make demo: installed; next time the demo starts at once"

# Installs and runs the main job: the virtual SMT line demo.
demo: $(DEMO_STAMP)
	@echo "make demo: starting the virtual line, a broker and the gateway (Ctrl-C stops everything)"
	$(BIN)/emsedge demo

# Installs everything (Python deps into .venv, mosquitto, rabbitmq-server, nats-server and chromium when missing)
# and runs the suite.
test: $(STAMP) mosquitto rabbitmq nats-server browser
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy src examples/adapter-json-file/emsedge_json_file
	$(BIN)/pytest -q -m "not soak" -p no:cacheprovider

soak: $(STAMP) mosquitto nats-server
	$(BIN)/pytest -q -m soak

# tests/integration/test_cfx_rabbitmq.py runs a private RabbitMQ node (AMQP 1.0 plugin is bundled).
rabbitmq:
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq rabbitmq-server; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq rabbitmq-server; fi; }

# tests/integration/test_nats_cluster.py runs a 3-node NATS JetStream cluster with MQTT (tests/support/nats_cluster.py).
nats-server:
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nats-server; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq nats-server; fi; }

# A 3-node NATS cluster with MQTT on free loopback ports, for trying the gateway by hand (Ctrl-C stops it).
nats-cluster: $(STAMP) nats-server
	$(BIN)/python tests/support/nats_cluster.py

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto; fi; }

# The status page's browser test drives Debian's chromium headless through chromedriver.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; fi; }

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy src examples/adapter-json-file/emsedge_json_file

# Benchmarks print figures (values/s, latency percentiles, CPU, RSS); a few minutes each, not tests.
bench: $(STAMP) mosquitto
	for b in pipeline buffer_replay publisher opcua hsms service_http web result_files; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
