"""WeCom's flat ``<xml>`` documents: parse untrusted ones safely, build our own.

Callback bodies arrive from the internet before any signature is checked, so parsing must be cheap
and must never expand entities, read a DTD or touch the network. Any DOCTYPE is refused outright:
WeCom never sends one, and refusing it removes XXE and entity-expansion attacks as a class, rather
than relying on parser flags alone.

Shape of the result: ``{child tag: text}`` for each child of ``<xml>``. A child that has children of
its own (non-kf events nest, e.g. ``<SendLocationInfo>`` or ``<SendPicsInfo><PicList><item>...``)
is kept as its *inner XML*, verbatim. That keeps every value a ``str``, loses nothing (repeated
``<item>`` elements included), and a consumer that cares can parse the value again with
``parse_xml(f"<xml>{value}</xml>")``. If a tag repeats at the top level the first occurrence wins.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

from lxml import etree

__all__ = ["XMLError", "build_xml", "callback_body", "parse_xml", "reply_envelope"]

MAX_BYTES = 64 * 1024

# Cheap pre-check on the raw bytes; the parsed document's docinfo is checked as well, which also
# covers encodings (UTF-16...) where these ASCII patterns would not appear literally.
_DECLARATION = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# Characters XML 1.0 cannot carry at all, not even inside CDATA.
_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class XMLError(ValueError):
    """The document was refused; ``reason`` is one of too_large, doctype, malformed, bad_root."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_local = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's parser: lxml parsers are reusable but not shareable between threads."""
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
        _local.parser = parser
    return parser


def _text(element: etree._Element) -> str:
    if len(element) == 0:
        return element.text or ""
    inner = [element.text or ""]
    # with_tail: the text between children belongs to the inner XML too; tostring escapes it again.
    inner.extend(etree.tostring(child, encoding="unicode", with_tail=True) for child in element)
    return "".join(inner)


def parse_xml(data: bytes | str, *, max_bytes: int = MAX_BYTES) -> dict[str, str]:
    """Parse a flat ``<xml>`` document into ``{tag: text}``; see the module docstring for nesting."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise XMLError("too_large", f"XML document is {len(raw)} bytes, limit {max_bytes}")
    if _DECLARATION.search(raw):
        raise XMLError("doctype", "XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        root = etree.fromstring(raw, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise XMLError("malformed", f"malformed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    doctype = docinfo.doctype  # type: ignore[union-attr]  # lxml-stubs lacks DocInfo.doctype
    if doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XMLError("doctype", "XML with a DOCTYPE or ENTITY declaration is refused")
    if root.tag != "xml":
        raise XMLError("bad_root", f"root element must be <xml>, not <{str(root.tag)[:64]}>")
    fields: dict[str, str] = {}
    for child in root:
        tag = child.tag
        if isinstance(tag, str):  # skip entity references and the like (not elements)
            fields.setdefault(tag, _text(child))
    return fields


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: end the section after "]]" and start another.
    # A parser turns every CR (even in CDATA) into LF, so CRs go outside as character references.
    text = value.replace("]]>", "]]]]><![CDATA[>").replace("\r", "]]>&#13;<![CDATA[")
    return "<![CDATA[" + text + "]]>"


def build_xml(fields: Mapping[str, str | int]) -> str:
    """``<xml><K><![CDATA[v]]></K>...</xml>``; ints are written bare, as WeCom writes CreateTime.

    Raises ValueError for a key that is not a plain XML name, or a value with characters XML cannot
    represent (NUL and most control characters), instead of producing a document nobody can parse.
    """
    parts = ["<xml>"]
    for key, value in fields.items():
        if not _NAME.match(key):
            raise ValueError(f"not a usable XML element name: {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"value of {key} must be str or int, not {type(value).__name__}")
        if isinstance(value, int):
            text = str(value)
        else:
            if _INVALID_CHARS.search(value):
                raise ValueError(f"value of {key} contains characters XML cannot represent")
            text = _cdata(value)
        parts.append(f"<{key}>{text}</{key}>")
    parts.append("</xml>")
    return "".join(parts)


def callback_body(to_user_name: str, encrypt: str, agent_id: str | int | None = None) -> str:
    """The body WeCom POSTs to a callback URL."""
    fields: dict[str, str | int] = {"ToUserName": to_user_name, "Encrypt": encrypt}
    if agent_id is not None:
        fields["AgentID"] = str(agent_id)  # WeCom sends it as CDATA
    return build_xml(fields)


def reply_envelope(encrypt: str, signature: str, timestamp: str | int, nonce: str) -> str:
    """A passive encrypted reply to a callback. ``timestamp`` must be numeric; it is written bare."""
    return build_xml(
        {"Encrypt": encrypt, "MsgSignature": signature, "TimeStamp": int(timestamp), "Nonce": nonce}
    )
