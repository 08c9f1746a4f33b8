# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[beam,serving,dicom-seg,dev]'
	@touch $(STAMP)

# Main job on the built-in default: synthetic cohort -> TFRecords -> train ->
# evaluate -> SavedModel under saved_models/radnet/<version>/.
run: $(STAMP)
	$(PY) -m radnet_tf.train

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs build *.egg-info
