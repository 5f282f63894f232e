# Two commands on a fresh machine (see README): `make sample` and `make test`.
VENV ?= .venv
STAMP := $(VENV)/.phenoclip-setup

.PHONY: setup sample test man clean-runs

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job on the bundled sample cohort: every preprocessing step, outputs in runs/sample/.
sample: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/run_sample.sh runs/sample

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

man: $(STAMP)
	$(VENV)/bin/python -m phenoclip.cli.manpages man

clean-runs:
	rm -rf runs
