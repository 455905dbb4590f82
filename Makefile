# Walle: the three commands of README.md.
.PHONY: setup demo test test-fast lint bench

setup:            ## Debian packages, .venv, cached lab rootfs (run as root on Debian 12)
	bash scripts/setup.sh

demo:             ## the main job: a lab of nspawn nodes running the example service
	.venv/bin/walle demo

test:             ## every tier: unit, consul, lab (nspawn), vm (qemu)
	.venv/bin/pytest

test-fast:        ## the pure tests only (seconds)
	.venv/bin/pytest tests/unit -q

lint:
	.venv/bin/ruff check scheduler plugins tests bench inventory

bench:
	.venv/bin/python bench/placement.py
