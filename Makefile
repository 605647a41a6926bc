# rankwatch: every set-up step lives here, so a fresh clone needs only `make demo` / `make test`.
# Each target is safe to run twice: the venv and the Kafka jars are built once and reused.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when the package's declared dependencies change.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)


.PHONY: demo test test-fast lint setup kafka clean

demo: setup kafka ## the end-to-end demo: local broker, topics, worker, a simulated job
	$(BIN)/rankwatch demo

test: setup kafka ## the whole test suite; starts (and stops) its own Kafka broker
	$(BIN)/python -m pytest

test-fast: setup ## everything that needs no broker
	$(BIN)/python -m pytest -m "not broker"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy cannot follow the editable install's import hook: give it a tree of links.
	@mkdir -p build/typecheck/rankwatch && for d in schemas config producers streams sinks infra cli simulate ui; \
		do ln -sfn ../../../$$d build/typecheck/rankwatch/$$d; done
	MYPYPATH=build/typecheck $(BIN)/python -m mypy -p rankwatch

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 not found)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

kafka: setup ## Apache Kafka's jars from Maven Central, into infra/.kafka (ignored by git)
	$(BIN)/python -c "from rankwatch.infra.jars import ensure_kafka_jars; ensure_kafka_jars()"

clean:
	-$(BIN)/rankwatch broker stop
	rm -rf $(VENV) infra/.kafka .rankwatch build *.egg-info
