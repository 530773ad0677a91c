# The two commands a new user needs (see README.md): `make run` and `make test`.
# Both set everything up first; scripts/bootstrap is idempotent and quick when nothing changed.
.PHONY: run test check bench bench-languages bench-queries profile fuzz config-fuzz scaleout setup dist

CONFIG ?= conf/dev.yaml

setup:
	@scripts/bootstrap

run: setup
	.venv/bin/twistd --pidfile= -n ingest -c $(CONFIG)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The sdist and the wheel (with the shipped configurations and deploy/ as package data) into dist/
dist: setup
	.venv/bin/python -m build --no-isolation --outdir dist .

check: setup
	.venv/bin/twistd --pidfile= -n ingest -c $(CONFIG) --check

bench: setup
	.venv/bin/python -m pip install --quiet -r bench/requirements.txt
	.venv/bin/python bench/ner_http.py

# Several models: detection cost against NER, two pools against one on a mixed English/French set, and
# re-extraction throughput after a model upgrade (docs/benchmarks.md "Several models")
bench-languages: setup
	.venv/bin/python bench/languages.py --runs $(or $(RUNS),3)
	.venv/bin/python bench/reextract.py --runs $(or $(RUNS),3)

# The read side (issue 18): entity queries, top-50s and timelines over HTTP on 100,000 generated articles in SQLite
# and 10,000 on the Firestore emulator; document reads per query, writes per article (docs/benchmarks.md)
bench-queries: setup
	.venv/bin/python bench/queries.py --rounds $(or $(ROUNDS),3)

# py-spy on the reactor process and an NER child, under load and on one-word round trips
profile: setup
	.venv/bin/python -m pip install --quiet -r bench/requirements.txt
	.venv/bin/python bench/ner_profile.py

fuzz: setup
	.venv/bin/python bench/http_fuzz.py -n $(or $(N),10000)

config-fuzz: setup
	.venv/bin/python bench/config_fuzz.py --count $(or $(N),2000)

# N worker hosts in network namespaces and CPU cgroups (needs root); SLEEP_MS=100 measures the path alone
scaleout: setup
	.venv/bin/python bench/scaleout.py --rounds $(or $(ROUNDS),3) $(if $(SLEEP_MS),--sleep-ms $(SLEEP_MS))
