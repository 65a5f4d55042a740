"""Replace a run's secret values with `***` in log lines, text files and Robot Framework's output.xml."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

MASK = "***"
MAX_TEXT_FILE_BYTES = 50 * 1024 * 1024


def _forms(value: str) -> set[str]:
    """The value as written raw, HTML/XML-escaped, JSON-escaped, and line by line when it spans lines."""
    forms = {value, html.escape(value, quote=True), html.escape(value, quote=False), json.dumps(value)[1:-1]}
    if "\n" in value:
        forms.update(line for line in value.splitlines() if len(line.strip()) >= 4)
    return {f for f in forms if f}


class Masker:
    """Masks every form of a set of secret values; an empty Masker changes nothing."""

    def __init__(self, values: Iterable[str]) -> None:
        forms = {form for value in values if value for form in _forms(value)}
        # Longest first, so a value that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes = re.compile(b"|".join(re.escape(f.encode()) for f in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._text is not None

    def mask(self, text: str) -> str:
        return self._text.sub(MASK, text) if self._text is not None else text

    def mask_optional(self, text: str | None) -> str | None:
        return None if text is None else self.mask(text)

    def mask_bytes(self, data: bytes) -> bytes:
        return self._bytes.sub(MASK.encode(), data) if self._bytes is not None else data

    def mask_text_bytes(self, data: bytes) -> bytes:
        """Masked if the data is UTF-8 text no larger than MAX_TEXT_FILE_BYTES, else unchanged."""
        if not self or len(data) > MAX_TEXT_FILE_BYTES:
            return data
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        return self.mask_bytes(data)

    def mask_file(self, path: Path) -> bool:
        """Mask a file in place if it is text (UTF-8) and not too large; True when it changed."""
        if not self or path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_TEXT_FILE_BYTES:
            return False
        data = path.read_bytes()
        masked = self.mask_text_bytes(data)
        if masked == data:
            return False
        path.write_bytes(masked)
        return True

    def mask_output_xml(self, path: Path) -> None:
        """Mask the text and attributes of Robot Framework's output.xml, keeping it valid XML."""
        if not self:
            return
        try:
            tree = ET.parse(path)
        except ET.ParseError:
            self.mask_file(path)  # a robot killed mid-write leaves broken XML: mask it as text
            return
        for element in tree.iter():
            if element.text:
                element.text = self.mask(element.text)
            if element.tail:
                element.tail = self.mask(element.tail)
            for key, value in element.attrib.items():
                element.attrib[key] = self.mask(value)
        tree.write(path, encoding="UTF-8", xml_declaration=True)
