"""A minimal XML tree that remembers the line of every element (ElementTree does not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.parsers import expat


@dataclass
class Node:
    tag: str
    line: int
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def find(self, tag: str) -> Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[Node]:
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str) -> str | None:
        node = self.find(tag)
        return None if node is None else node.text.strip()


class XmlError(ValueError):
    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


def parse(data: bytes) -> Node:
    """Parse ``data`` into the root :class:`Node`; raises :class:`XmlError` with the line."""
    parser = expat.ParserCreate()
    top = Node("", 0)
    stack = [top]

    def start(tag, _attrs):
        node = Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag):
        stack.pop()

    def chars(text):
        stack[-1].text += text

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlError(expat.ErrorString(exc.code), exc.lineno) from exc
    if not top.children:
        raise XmlError("no root element", 1)
    return top.children[0]
