"""Untrusted callback XML: refused before any entity, DTD or network access; our own XML round-trips."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wecom.xml import MAX_BYTES, XMLError, build_xml, callback_body, parse_xml, reply_envelope


def refused(data: bytes | str, reason: str, **kwargs: int) -> XMLError:
    with pytest.raises(XMLError) as exc:
        parse_xml(data, **kwargs)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ValueError)
    return exc.value


def test_flat_document_with_cdata_and_text() -> None:
    doc = b"<xml><ToUserName><![CDATA[ww1]]></ToUserName><CreateTime>1348831860</CreateTime><E></E></xml>"
    assert parse_xml(doc) == {"ToUserName": "ww1", "CreateTime": "1348831860", "E": ""}


def test_values_are_kept_exactly() -> None:
    doc = "<xml><A><![CDATA[  spaced\n]]></A><B>a &amp; b &lt;c&gt;</B><C>客服</C></xml>"
    assert parse_xml(doc) == {"A": "  spaced\n", "B": "a & b <c>", "C": "客服"}


def test_xml_declaration_and_comments_are_fine() -> None:
    doc = b"<?xml version='1.0' encoding='utf-8'?>\n<xml><!-- hi --><A>a<!-- c -->b</A></xml>"
    assert parse_xml(doc) == {"A": "ab"}


def test_nested_elements_keep_their_inner_xml() -> None:
    doc = (
        b"<xml><Event><![CDATA[location_select]]></Event><SendLocationInfo><Location_X><![CDATA[23.1]]></Location_X>"
        b"<Label><![CDATA[a & b]]></Label></SendLocationInfo><SendPicsInfo><Count>2</Count><PicList>"
        b"<item><PicMd5Sum>x</PicMd5Sum></item><item><PicMd5Sum>y</PicMd5Sum></item></PicList></SendPicsInfo></xml>"
    )
    fields = parse_xml(doc)
    assert fields["Event"] == "location_select"
    assert parse_xml(f"<xml>{fields['SendLocationInfo']}</xml>") == {"Location_X": "23.1", "Label": "a & b"}
    pics = parse_xml(f"<xml>{fields['SendPicsInfo']}</xml>")
    assert pics["Count"] == "2"
    assert pics["PicList"].count("<item>") == 2  # repeated elements are not lost


def test_first_of_repeated_top_level_tags_wins() -> None:
    assert parse_xml(b"<xml><A>1</A><A>2</A></xml>") == {"A": "1"}


def test_external_entity_is_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file://{secret}">]><xml><A>&xxe;</A></xml>'
    )
    error = refused(doc, "doctype")
    assert "TOP-SECRET" not in str(error)


def test_external_entity_in_utf16_is_refused_after_parsing(tmp_path: Path) -> None:
    # The byte pre-check cannot see an ASCII "<!DOCTYPE" in UTF-16; the parsed docinfo check must.
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (
        '<?xml version="1.0" encoding="UTF-16"?>'
        f'<!DOCTYPE xml [<!ENTITY x SYSTEM "file://{secret}">]><xml><A>&x;</A></xml>'
    )
    error = refused(doc.encode("utf-16"), "doctype")
    assert "TOP-SECRET" not in str(error)


def test_billion_laughs() -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    doc = f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY l0 "lol">{entities}]><xml><A>&l9;</A></xml>'
    refused(doc, "doctype")


@pytest.mark.parametrize(
    "doc",
    [
        b"<!DOCTYPE xml><xml><A>1</A></xml>",
        b'<!doctype xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml/>',
        b"<xml><A>1</A></xml><!ENTITY x 'y'>",
    ],
)
def test_any_doctype_or_entity_declaration(doc: bytes) -> None:
    refused(doc, "doctype")


def test_oversize() -> None:
    doc = b"<xml><A>" + b"a" * MAX_BYTES + b"</A></xml>"
    refused(doc, "too_large")
    refused(b"<xml><A>12345</A></xml>", "too_large", max_bytes=10)
    assert parse_xml(doc, max_bytes=len(doc)) == {"A": "a" * MAX_BYTES}


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"   ",
        b"<xml>",
        b"<xml><A>1</B></xml>",
        b"not xml",
        b"<xml><A>&undefined;</A></xml>",
        b"\xff\xfe\x00",
    ],
)
def test_malformed(doc: bytes) -> None:
    refused(doc, "malformed")


@pytest.mark.parametrize("doc", [b"<foo><A>1</A></foo>", b"<XML/>", b'<xml xmlns="urn:x"><A>1</A></xml>'])
def test_wrong_root(doc: bytes) -> None:
    refused(doc, "bad_root")


def test_parsers_are_per_thread() -> None:
    docs = [build_xml({"N": n, "T": f"text {n}"}) for n in range(200)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(parse_xml, docs))
    assert results == [{"N": str(n), "T": f"text {n}"} for n in range(200)]


# -- building ------------------------------------------------------------------------------------

XML_CHAR = st.characters(
    blacklist_categories=["Cs"], blacklist_characters=[*map(chr, range(0x20)), "\ufffe", "\uffff"]
)
TRICKY = st.sampled_from(["\t", "\n", "\r", "\r\n", "]]>", "]]", "<![CDATA[", "&amp;", "<a>", " "])
XML_TEXT = st.lists(XML_CHAR | TRICKY, max_size=40).map("".join)


@given(value=XML_TEXT, number=st.integers(-(2**63), 2**63))
def test_build_then_parse_round_trips(value: str, number: int) -> None:
    assert parse_xml(build_xml({"Content": value, "CreateTime": number})) == {
        "Content": value,
        "CreateTime": str(number),
    }


def test_cdata_terminator_is_split() -> None:
    built = build_xml({"Content": "a]]>b"})
    assert built == "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>"
    assert parse_xml(built) == {"Content": "a]]>b"}


def test_ints_are_written_bare() -> None:
    assert build_xml({"CreateTime": 1348831860}) == "<xml><CreateTime>1348831860</CreateTime></xml>"


@pytest.mark.parametrize("fields", [{"bad name": "x"}, {"A": "nul\x00"}, {"<A>": "x"}, {"": "x"}])
def test_build_refuses_what_xml_cannot_carry(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build_xml(fields)


def test_build_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        build_xml({"A": True})


def test_callback_body_matches_wecom() -> None:
    assert callback_body("corpid", "ENC", 218) == (
        "<xml><ToUserName><![CDATA[corpid]]></ToUserName><Encrypt><![CDATA[ENC]]></Encrypt>"
        "<AgentID><![CDATA[218]]></AgentID></xml>"
    )
    assert parse_xml(callback_body("corpid", "ENC")) == {"ToUserName": "corpid", "Encrypt": "ENC"}


def test_reply_envelope_matches_wecom() -> None:
    assert reply_envelope("ENC", "SIG", "1409659813", "nonce") == (
        "<xml><Encrypt><![CDATA[ENC]]></Encrypt><MsgSignature><![CDATA[SIG]]></MsgSignature>"
        "<TimeStamp>1409659813</TimeStamp><Nonce><![CDATA[nonce]]></Nonce></xml>"
    )
