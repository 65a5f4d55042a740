"""A small robot for the input/output and work-item tests: reads an invoice item and its file, writes output.json."""

from __future__ import annotations

from pathlib import Path

ROBOT_YAML = """\
name: {name}
tasks:
  Book invoice:
    python: bot:main
  Book invoice in Robot Framework:
    robot: tasks.robot
environment:
  python: ">=3.11"
artifacts: output
timeout: 2m
"""

BOT_PY = '''\
import json
import os
import time
from pathlib import Path


def main():
    item = json.loads(Path(os.environ["CT_INPUT_FILE"]).read_text())
    if item.get("sleep"):
        time.sleep(item["sleep"])
    if item.get("bad"):
        raise SystemExit(f"invoice {item['id']} is malformed")
    files = sorted(p.name for p in Path(os.environ["CT_INPUT_DIR"]).iterdir())
    text = "".join((Path(os.environ["CT_INPUT_DIR"]) / name).read_text() for name in files)
    output = {"id": item["id"], "booked": item.get("amount", 0) * 2, "files": files, "text": text}
    Path(os.environ["CT_OUTPUT_FILE"]).write_text(json.dumps(output))
'''

TASKS_ROBOT = """\
*** Settings ***
Library    OperatingSystem

*** Tasks ***
Book invoice in Robot Framework
    ${item}=    Get File    ${INPUT_FILE}
    ${text}=    Get File    ${INPUT_DIR}/invoice.txt
    Create File    ${OUTPUT_FILE}    {"rf": true, "text": "${text}"}
"""


def make_invoice_robot(root: Path, name: str = "invoice-bot") -> Path:
    root.mkdir(parents=True)
    (root / "robot.yaml").write_text(ROBOT_YAML.format(name=name))
    (root / "bot.py").write_text(BOT_PY)
    (root / "tasks.robot").write_text(TASKS_ROBOT)
    return root
