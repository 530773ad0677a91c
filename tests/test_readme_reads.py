"""The README's curl lines of "The articles API", run as written against a daemon on conf/dev.yaml.

Every line is sent in order by the real ``curl`` (only the port differs: the daemon listens on a free one), so
the reads find what the posts above them stored; each answer must be a 2xx JSON answer that found something.
"""
from __future__ import annotations

import json
import os
import re
import shlex

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.conftest import DEV, ROOT, url

README = os.path.join(ROOT, "README.md")


def api_section_curls() -> list[list[str]]:
    """The curl commands of the README's "The articles API" section (up to the next top-level section)."""
    with open(README, encoding="utf-8") as stream:
        text = stream.read()
    section = text[text.index("## The articles API"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("curl "):
                commands.append(shlex.split(line, comments=True))
    return commands


@pytest_twisted.ensureDeferred
async def test_every_curl_line_of_the_articles_api_works_on_the_dev_config(daemons):
    commands = api_section_curls()
    reads = [words for words in commands if not {"-d", "--data-binary"} & set(words)]
    assert len(commands) >= 10 and len(reads) >= 7, commands
    routes = {re.sub(r"\?.*", "", words[-1].split("8080", 1)[1]).split("/")[1] for words in reads}
    assert {"articles", "sources", "entities"} <= routes  # every read route has its line
    daemon = await daemons(path=DEV, overrides=["web.main.port=0"])
    address = url(daemon, "").removeprefix("http://")
    for written in commands:
        words = [word.replace("localhost:8080", address) for word in written]
        output, errors, code = await getProcessOutputAndValue(
            "/usr/bin/curl", [*words[1:], "-w", "\n%{http_code}"], env=dict(os.environ), path=ROOT)
        body, _, status = output.decode().rpartition("\n")
        shown = " ".join(words)
        assert code == 0 and status.startswith("2"), f"{shown}: {status} {body[:300]} {errors[:300]!r}"
        answer = json.loads(body)
        if written in reads:
            found = answer.get("total", answer.get("count"))
            assert found, f"{shown} found nothing: {body[:300]}"
