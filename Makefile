# Developer entry points. CI runs .ci/run; these are for people.

PYTHON ?= python

.PHONY: help test lint-artifacts e2e

help:
	@echo "make test            python -m pytest"
	@echo "make lint-artifacts  hadolint, compose config, kubernetes-validate, helm lint, workflow checks"
	@echo "make e2e             build the image and run docker-compose.yml on a private dockerd (root)"

test:
	$(PYTHON) -m pytest

lint-artifacts:
	bash .ci/lint-artifacts

e2e:
	bash .ci/e2e
