# kbxy.platform: one entry point for setting up, linting, testing and demonstrating the
# collection. `make test` does everything from nothing; `make demo` brings hosts up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
DEBIAN_VERSIONS ?= 12 13
SCENARIOS ?=
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0

.PHONY: help setup engine images lint lint-yaml lint-ansible sanity unit setup-esrgan esrgan bench-esrgan molecule test demo demo-destroy build clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## controller venv, Python requirements, collections, host tools
	@tests/scripts/setup.sh

engine: ## make sure a Docker engine answers (installs and starts it if needed)
	@tests/images/ensure-docker.sh

images: engine ## build the debootstrap test host images (cached)
	@tests/images/build.sh $(DEBIAN_VERSIONS)

lint-yaml: setup
	yamllint -s .

lint-ansible: setup
	ansible-lint --profile production

sanity: setup ## ansible-test sanity on a copy under ansible_collections/kbxy/platform
	@tests/scripts/sanity.sh

lint: lint-yaml lint-ansible sanity ## yamllint + ansible-lint (production) + ansible-test sanity

unit: setup ## pytest: module_utils unit tests and module integration tests
	@set -o pipefail; mkdir -p build/logs; \
	pytest -p no:cacheprovider -n 2 -q | tee build/logs/unit.log; rc=$$?; \
	tail -n 1 build/logs/unit.log >> build/logs/pytest-closing-lines.txt; exit $$rc

setup-esrgan: ## controller venv .venv-esrgan: torch, spandrel, realesrgan reference (uv-cached, stamped)
	@tests/scripts/setup-realesrgan.sh

esrgan: setup-esrgan ## kbxy-upscale tests on the CPU (equivalence with RealESRGANer, API, load, jobs)
	@set -o pipefail; mkdir -p build/logs; \
	.venv-esrgan/bin/pytest -c tests/realesrgan/pytest.ini --rootdir . | tee build/logs/realesrgan.log; rc=$$?; \
	tail -n 1 build/logs/realesrgan.log >> build/logs/pytest-closing-lines.txt; exit $$rc

bench-esrgan: setup-esrgan ## kbxy-upscale vs RealESRGANer MP/s (ARGS=--gpu on CUDA)
	.venv-esrgan/bin/python tests/bench/realesrgan_bench.py --out build/bench/realesrgan-cpu.json $(ARGS)

molecule: setup images ## every molecule scenario (MOLECULE_JOBS side by side; SCENARIOS= to pick)
	@tests/scripts/molecule.sh $(SCENARIOS)

# set-up first, then two lanes side by side: the checks (lint, sanity, unit, esrgan) and
# molecule (itself MOLECULE_JOBS scenarios side by side); a failure in either fails the run
test: ## everything, from nothing, with a per-stage timing summary and the critical path
	@tests/scripts/run-stages.sh \
		"setup:$(MAKE) -s setup" \
		"engine:$(MAKE) -s engine" \
		"images:$(MAKE) -s images" \
		"molecule/molecule:$(MAKE) -s molecule" \
		"checks/lint:$(MAKE) -s lint-yaml lint-ansible" \
		"checks/sanity:$(MAKE) -s sanity" \
		"checks/unit:$(MAKE) -s unit" \
		"checks/esrgan:$(MAKE) -s esrgan"

demo: setup images ## converge the demo hosts in local containers and show them
	@tests/scripts/demo.sh

demo-destroy: setup ## remove the demo containers
	@source $(VENV)/bin/activate && molecule destroy -s stack

build: setup ## build the collection tarball
	ansible-galaxy collection build --force --output-path build/

clean: ## remove build output and the controller venvs
	rm -rf build .collections .venv .venv-sanity .venv-esrgan
