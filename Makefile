# Walle: README.md's two commands. `make demo` and `make test` each set up whatever is missing
# first (Debian packages, .venv, the cached lab rootfs); `make setup` does only that.
.PHONY: setup demo test test-fast lint bench

# The stamp is renewed whenever the dependencies or the setup script change.
SETUP_STAMP := .venv/.walle-setup

$(SETUP_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup:            ## Debian packages, .venv, cached lab rootfs (run as root on Debian 12)
	bash scripts/setup.sh
	touch $(SETUP_STAMP)

demo: $(SETUP_STAMP)   ## the main job: a lab of nspawn nodes running the example service
	.venv/bin/walle demo

test: $(SETUP_STAMP)   ## every tier: unit, consul, lab (nspawn), vm (qemu), browser (chromium)
	.venv/bin/pytest

test-fast: $(SETUP_STAMP)   ## the pure tests only (seconds)
	.venv/bin/pytest tests/unit -q

lint: $(SETUP_STAMP)
	.venv/bin/ruff check scheduler plugins tests bench inventory
	.venv/bin/ansible-lint

bench: $(SETUP_STAMP)
	.venv/bin/python bench/placement.py
