# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run` installs what the main job needs (the package and its serving extra, for the
# export's warm-up requests); `make test` installs that and Beam, highdicom, nibabel and the
# test tools in one go.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# The virtual environment, with a current pip (both installs start with it).
NEW_VENV = (test -x $(PY) || $(PYTHON) -m venv $(VENV)) && $(PY) -m pip install -q --upgrade pip

.PHONY: run test clean

$(RUN_STAMP): setup.py pyproject.toml
	$(NEW_VENV)
	$(PY) -m pip install -q -e '.[serving]'
	@touch $@

# One resolution for everything `make test` needs (it covers `make run`'s install too).
$(TEST_STAMP): setup.py pyproject.toml
	$(NEW_VENV)
	$(PY) -m pip install -q -e '.[beam,serving,dicom-seg,nifti,dev]'
	@touch $(RUN_STAMP) $@

# Main job on the built-in default: synthetic cohort -> TFRecords -> train ->
# evaluate -> SavedModel under saved_models/radnet/<version>/.
run: $(RUN_STAMP)
	$(PY) -m radnet_tf.train

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist worksteal --durations=15 tests

clean:
	rm -rf $(VENV) runs build dist *.egg-info
