"""Starter robots for `ctower robot new`: each template is a working package of a few small files."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = ("files", "web", "python")


def _robot_yaml(name: str, description: str, tasks: str, requirements: str = "[]") -> str:
    return (
        f"name: {name}\n"
        f"description: {description}\n"
        f"tasks:\n{tasks}"
        "environment:\n"
        '  python: ">=3.11"\n'
        f"  requirements: {requirements}\n"
        "artifacts: output\n"
        "timeout: 10m\n"
    )


_FILES_SUITE = """\
*** Settings ***
Documentation     Sorts the files of an inbox folder into a report: a starting point for file-handling robots.
Library           OperatingSystem
Library           Collections

*** Variables ***
${INBOX}          ${CURDIR}/inbox
${OUTPUT}         ${CURDIR}/output

*** Tasks ***
Process files
    Create Directory    ${OUTPUT}
    @{files}=    List Files In Directory    ${INBOX}
    Log    Found ${{len($files)}} file(s) in the inbox
    FOR    ${file}    IN    @{files}
        ${text}=    Get File    ${INBOX}/${file}
        Append To File    ${OUTPUT}/report.txt    ${file}: ${{len($text)}} characters\\n
    END
    File Should Exist    ${OUTPUT}/report.txt
"""

_WEB_SUITE = """\
*** Settings ***
Documentation     Fetches a web page and checks its content, with Python's standard library only.
...               Pass another page with --var URL=https://example.org/.
Library           OperatingSystem
Library           web.py

*** Variables ***
${URL}            ${EMPTY}
${OUTPUT}         ${CURDIR}/output

*** Tasks ***
Check web page
    Create Directory    ${OUTPUT}
    ${page}=    Fetch Page    ${URL}
    Should Contain    ${page}    <title>
    Create File    ${OUTPUT}/page.html    ${page}
    Log    Saved ${{len($page)}} characters
"""

_WEB_LIBRARY = '''\
"""Keywords for the web template: fetch a page over HTTP(S) with the standard library."""

from urllib.request import urlopen

SAMPLE = "<html><head><title>Sample</title></head><body>No URL given: this is a built-in page.</body></html>"


def fetch_page(url: str = "") -> str:
    """The page at `url` as text; without a URL, a built-in sample so the robot runs offline."""
    if not url:
        return SAMPLE
    with urlopen(url, timeout=30) as response:  # noqa: S310 (the robot's own URL)
        return response.read().decode(response.headers.get_content_charset() or "utf-8", "replace")
'''

_PYTHON_MODULE = '''\
"""Tasks written in plain Python: a function per task, run with the robot's environment."""

import json
import os
from pathlib import Path


def main() -> None:
    """Write a small summary of the run's input (CT_INPUT_FILE) and variables to output/summary.json."""
    out = Path("output")
    out.mkdir(exist_ok=True)
    input_file = os.environ.get("CT_INPUT_FILE")
    data = json.loads(Path(input_file).read_text()) if input_file else {}
    variables = {k[len("CT_VAR_"):]: v for k, v in os.environ.items() if k.startswith("CT_VAR_")}
    summary = {"input_keys": sorted(data), "variables": variables}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary written: {summary}")
'''


def render(template: str, name: str) -> dict[str, str]:
    """The files of a new robot as {relative path: text}."""
    if template == "files":
        return {
            "robot.yaml": _robot_yaml(name, "Reads the files in inbox/ and writes a report",
                                      "  Process files:\n    robot: tasks.robot\n"),
            "tasks.robot": _FILES_SUITE,
            "inbox/invoice-001.txt": "Invoice 001\nTotal: 120.00 EUR\n",
            "inbox/invoice-002.txt": "Invoice 002\nTotal: 80.50 EUR\n",
        }
    if template == "web":
        return {
            "robot.yaml": _robot_yaml(name, "Fetches a web page and keeps a copy",
                                      "  Check web page:\n    robot: tasks.robot\n"),
            "tasks.robot": _WEB_SUITE,
            "web.py": _WEB_LIBRARY,
        }
    if template == "python":
        return {
            "robot.yaml": _robot_yaml(name, "A task written in plain Python",
                                      "  Summarise:\n    python: bot:main\n"),
            "bot.py": _PYTHON_MODULE,
        }
    raise ValueError(f"template: {template!r} is not one of {', '.join(TEMPLATES)}")


def create(root: Path, template: str, name: str) -> list[Path]:
    """Write a new robot into `root` (which must not exist or be empty); returns the files written."""
    files = render(template, name)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty")
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
