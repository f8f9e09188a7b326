# Two commands do all the set-up on a fresh machine:
#   make demo   -- the DPFR recipe at demo size on built-in synthetic glands (CPU)
#   make test   -- everything: unit/property/doctests, slow end-to-end runs, docs with -W
.PHONY: test demo docs bench clean

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

docs:
	bash scripts/setup_venv.sh test,docs,examples
	.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

bench:
	bash scripts/setup_venv.sh test,docs,examples
	OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.run_all

clean:
	rm -rf .venv docs/_build .pytest_cache .hypothesis
