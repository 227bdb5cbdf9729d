# Two entry points: `make demo` (the main job) and `make test` (lint, types, tests). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TYPED_DEPS := torch, numpy, scipy, sklearn, matplotlib, safetensors, tqdm, boto3, botocore, mlflow, wandb, huggingface_hub
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test lint test-slow bench peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The local CPU wheel of torch 2.13.0 where it exists (a newer torch pulls GBs of CUDA packages);
	# elsewhere any torch the metadata allows.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q "torch>=2.1"
	$(BIN)/pip install -q -e ".[dev]"
	@if [ ! -f $(FASHION_MNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist; the Fashion-MNIST tests will be skipped"; \
	fi
	# the dependencies' types into mypy's cache (18 s cold, set-up's work): `make test` then checks src in ~2 s
	$(BIN)/mypy -c "import $(TYPED_DEPS)" >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/byol demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

# pytest-xdist: one worker per core (each computes on one thread, tests/conftest.py)
test: lint
	$(BIN)/python -m pytest -q -n auto --dist worksteal

test-slow: setup
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m slow

# The peers that benchmarks/peers_cifar.py runs, outside the package's dependencies: lightly and the torchvision
# it imports, in the git-ignored .peers/ (PYTHONPATH=.peers). torchvision's registry wheel is a CUDA build whose
# meta registrations cannot load beside the CPU torch; that one module is replaced by an empty one there.
PEERS := lightly==1.5.26 torchvision==0.28.0 requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.3 \
	certifi==2026.10.19.post1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	aenum==3.1.17 lightning-utilities==0.15.3 scikit-image==0.26.0
peers: setup
	$(BIN)/pip install -q --no-deps --target .peers $(PEERS)
	echo "# skipped: needs torchvision's C extension, which cannot load with the CPU torch" \
		> .peers/torchvision/_meta_registrations.py
	# the key layout tests/test_interop.py checks the torchvision export against, from torchvision's own models
	PYTHONPATH=.peers $(BIN)/python benchmarks/torchvision_keys.py > tests/data/torchvision_resnet_keys.json

clean:
	rm -rf $(VENV) runs .peers .pytest_cache .mypy_cache .ruff_cache
