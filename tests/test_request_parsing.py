"""Request parsing as plain functions: query strings and headers in, a request or a 4xx out.

No sockets, no etcd: each rule of kube-apiserver's ListOptions / watch parameters and of content
negotiation is one row here (the end-to-end tests keep a few of them through uvicorn and etcd).
"""

from __future__ import annotations

import json
import types
from typing import Any, Dict, Optional

import hypothesis
import pytest

from streamcodec.server.handlers import ListRequest, Selectors, WatchRequest, count_param, resource_version
from streamcodec.server.negotiation import format_for_content_type, negotiate, parse_accept
from streamcodec.server.status import APIError

ALL = ["json", "cbor", "protobuf", "protobuf-struct", "msgpack"]


def _code(call: Any) -> int:
    with pytest.raises(APIError) as info:
        call()
    return info.value.code


# -- ListOptions -------------------------------------------------------------

@pytest.mark.parametrize("query,expected", [
    ({}, (None, None, None, 0)),  # consistent read of the newest
    ({"resourceVersion": "0"}, (None, None, None, 0)),
    ({"resourceVersion": "42"}, (None, None, None, 42)),  # NotOlderThan 42 (legacy: no match, no limit)
    ({"resourceVersion": "42", "limit": "10"}, (10, None, 42, 0)),  # with limit: Exact (kube's legacy rule)
    ({"resourceVersion": "42", "resourceVersionMatch": "Exact"}, (None, None, 42, 0)),
    ({"resourceVersion": "42", "resourceVersionMatch": "NotOlderThan", "limit": "5"}, (5, None, None, 42)),
    ({"limit": "0"}, (None, None, None, 0)),  # limit 0 = no limit
    ({"continue": "tok", "resourceVersion": "0"}, (None, "tok", None, 0)),
])
def test_list_options_are_read_as_kube_reads_them(query: Dict[str, str], expected: tuple) -> None:
    request = ListRequest.parse(query)
    assert (request.limit, request.continue_token, request.revision, request.min_revision) == expected


@pytest.mark.parametrize("query,code", [
    ({"resourceVersionMatch": "Exact"}, 400),  # a match without a resourceVersion
    ({"resourceVersion": "0", "resourceVersionMatch": "Exact"}, 400),
    ({"resourceVersion": "1", "resourceVersionMatch": "Newest"}, 400),
    ({"continue": "tok", "resourceVersion": "7"}, 400),
    ({"continue": "tok", "resourceVersion": "0", "resourceVersionMatch": "NotOlderThan"}, 400),
    ({"sendInitialEvents": "true"}, 422),  # forbidden for list
    ({"resourceVersion": "-1"}, 400),
    ({"resourceVersion": "18446744073709551616"}, 400),  # 2**64
    ({"resourceVersion": "١٢"}, 400),  # non-ASCII digits
    ({"limit": "-5"}, 400),
    ({"limit": "1e3"}, 400),
    ({"limit": "1" * 19}, 400),
    ({"labelSelector": "app in (x"}, 400),  # unparsable: refused, never ignored
    ({"fieldSelector": "spec.nodeName=n1"}, 400),
    ({"fieldSelector": "metadata.name"}, 400),  # no operator
])
def test_bad_list_options_are_4xx(query: Dict[str, str], code: int) -> None:
    assert _code(lambda: ListRequest.parse(query)) == code


def test_resource_version_and_counts_bounds() -> None:
    assert resource_version(str((1 << 64) - 1), "resourceVersion") == (1 << 64) - 1
    assert count_param({}, "limit") is None and count_param({"limit": ""}, "limit") is None
    assert count_param({"limit": "500"}, "limit") == 500


@pytest.mark.parametrize("selector,name,namespace", [
    ("metadata.name=a", "a", None),
    ("metadata.name==a", "a", None),
    ("metadata.namespace=ns,metadata.name=a", "a", "ns"),
    ("", None, None),
])
def test_field_selectors_on_name_and_namespace(selector: str, name: Optional[str], namespace: Optional[str]) -> None:
    keys = Selectors.parse({"fieldSelector": selector})
    assert (keys.name, keys.namespace) == (name, namespace)
    assert keys.active == (name is not None or namespace is not None)


def _kv(key: bytes, labels: Optional[Dict[str, str]] = None) -> Any:
    return types.SimpleNamespace(key=key, value=json.dumps({"metadata": {"labels": labels} if labels else {}}).encode())


def test_field_selector_matches_keys() -> None:
    keys = Selectors.parse({"fieldSelector": "metadata.namespace=ns,metadata.name=a"})
    prefix = b"/registry/secrets/"
    assert keys.matches(_kv(prefix + b"ns/a"), prefix)
    assert not keys.matches(_kv(prefix + b"ns/b"), prefix)
    assert not keys.matches(_kv(prefix + b"other/a"), prefix)


@pytest.mark.parametrize("selector, obj, selected", [
    ("spec.nodeName=n1", {"spec": {"nodeName": "n1"}}, True),
    ("spec.nodeName=n1", {"spec": {}}, False),
    ("spec.nodeName=", {"spec": {}}, True),  # unset is "", as kube's field set has it
    ("spec.nodeName!=n1", {}, True),
    ("spec.nodeName==n1,status.phase=Running", {"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}, True),
    ("spec.nodeName==n1,status.phase=Running", {"spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}, False),
    ("spec.hostNetwork=false", {"spec": {}}, True),
    ("spec.hostNetwork=true", {"spec": {"hostNetwork": True}}, True),
    ("metadata.name!=x", {"metadata": {"name": "y"}}, True),
    ("metadata.name!=x", {"metadata": {"name": "x"}}, False),
    (r"spec.schedulerName=a\,b", {"spec": {"schedulerName": "a,b"}}, True),
    (r"spec.schedulerName=a\=b", {"spec": {"schedulerName": "a=b"}}, True),
])
def test_field_selectors_on_object_fields(selector: str, obj: Dict[str, Any], selected: bool) -> None:
    fields = ("spec.nodeName", "status.phase", "spec.hostNetwork", "spec.schedulerName")
    parsed = Selectors.parse({"fieldSelector": selector}, fields)
    kv = types.SimpleNamespace(key=b"/r/ns/y", value=json.dumps(obj).encode())
    assert parsed.active and parsed.matches(kv, b"/r/") is selected


def test_a_field_the_kind_cannot_select_on_is_kubes_400() -> None:
    with pytest.raises(APIError) as info:
        Selectors.parse({"fieldSelector": "spec.x=1"}, ("type",))
    assert info.value.code == 400
    assert info.value.message == '"spec.x" is not a known field selector: only "metadata.name", "metadata.namespace", "type"'


# kube's labels.Parse semantics: (selector, labels -> selected)
LABEL_CASES = [
    ("app=web", {"app": "web"}, True), ("app=web", {"app": "db"}, False), ("app=web", {}, False),
    ("app==web", {"app": "web"}, True), ("app!=web", {"app": "db"}, True), ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False), ("app", {"app": ""}, True), ("app", {}, False), ("!app", {}, True),
    ("!app", {"app": "x"}, False), ("env in (a, b)", {"env": "b"}, True), ("env in (a,b)", {"env": "c"}, False),
    ("env notin (a,b)", {}, True), ("env notin (a,b)", {"env": "a"}, False), ("n>3", {"n": "4"}, True),
    ("n>3", {"n": "3"}, False), ("n<3", {"n": "x"}, False), ("n<3", {}, False),
    ("app=web,tier", {"app": "web", "tier": "1"}, True), ("app=web,tier", {"app": "web"}, False),
    (" app = web , !gone ", {"app": "web"}, True), ("example.com/owner=me", {"example.com/owner": "me"}, True),
    ("app=", {"app": ""}, True), ("app=", {"app": "x"}, False),
]


@pytest.mark.parametrize("selector, labels, selected", LABEL_CASES)
def test_label_selectors_select_as_kube_does(selector: str, labels: Dict[str, str], selected: bool) -> None:
    parsed = Selectors.parse({"labelSelector": selector})
    assert parsed.active and parsed.matches(_kv(b"/r/ns/x", labels), b"/r/") is selected


@pytest.mark.parametrize("selector", [
    "app=web=x", "app in a,b", "app in ()", "app notin (a", "n>x", "a b", "!", "app,", ",app", "bad key=x", "app=has space",
    "app=" + "v" * 64, "Bad_Prefix/app=x", "app in (a b)", "=x", "app>", "app=(x)",
])
def test_label_selectors_kube_cannot_parse_are_400s(selector: str) -> None:
    with pytest.raises(APIError) as info:
        Selectors.parse({"labelSelector": selector})
    assert info.value.code == 400 and info.value.message.startswith("unable to parse requirement: "), info.value.message


def test_an_empty_label_selector_selects_everything() -> None:
    assert not Selectors.parse({"labelSelector": ""}).active


# -- watch parameters --------------------------------------------------------

def test_watch_list_parameters_as_client_go_sends_them() -> None:
    request = WatchRequest.parse({
        "watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
        "resourceVersionMatch": "NotOlderThan", "resourceVersion": "", "timeoutSeconds": "300",
    }, min_request_timeout=1800)
    assert request.initial_events and request.initial_events_bookmark and request.allow_bookmarks
    assert request.resource_version == 0 and request.timeout == 300


@pytest.mark.parametrize("query,initial", [
    ({}, True),  # legacy: resourceVersion unset = the current state first
    ({"resourceVersion": "0"}, True),
    ({"resourceVersion": "5"}, False),  # from a revision: changes only
    ({"sendInitialEvents": "false", "resourceVersionMatch": "NotOlderThan", "resourceVersion": "5"}, False),
])
def test_when_a_watch_starts_with_the_current_state(query: Dict[str, str], initial: bool) -> None:
    assert WatchRequest.parse(query, min_request_timeout=1800).initial_events is initial


@pytest.mark.parametrize("seconds,low,high", [
    (None, 1800, 3600),  # none: random in [T, 2T], so watches opened together do not end together
    ("0", 1800, 3600),  # 0 is "none", not "end at once"
    ("60", 60, 60),
    ("999999", 1800, 3600),  # capped by the server
])
def test_watch_timeouts_follow_min_request_timeout(seconds: Optional[str], low: float, high: float) -> None:
    query = {} if seconds is None else {"timeoutSeconds": seconds}
    timeout = WatchRequest.parse(query, min_request_timeout=1800).timeout
    assert low <= timeout <= high


@pytest.mark.parametrize("query", [
    {"sendInitialEvents": "true", "allowWatchBookmarks": "true"},  # needs NotOlderThan
    {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"},  # needs bookmarks
    {"resourceVersionMatch": "NotOlderThan", "resourceVersion": "1"},  # a match needs sendInitialEvents
    {"continue": "x"},
    {"allowWatchBookmarks": "maybe"},
    {"timeoutSeconds": "-1"},
])
def test_bad_watch_parameters_are_400(query: Dict[str, str]) -> None:
    assert _code(lambda: WatchRequest.parse(query, min_request_timeout=1800)) == 400


# -- content negotiation -----------------------------------------------------

@pytest.mark.parametrize("accept,available,chosen", [
    (None, ALL, "json"),
    ("", ALL, "json"),
    ("*/*", ALL, "json"),
    ("application/vnd.kubernetes.protobuf,application/json", ALL, "protobuf"),  # client-go
    ("application/vnd.kubernetes.protobuf,application/json", ["json", "cbor"], "json"),  # kind without a message
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json", ALL, "json"),  # kubectl get
    ("application/json;q=0.5,application/cbor", ALL, "cbor"),
    ("application/cbor;q=0,application/json", ALL, "json"),
    ("application/vnd.kubernetes.protobuf;stream=watch", ALL, "protobuf"),
    ("application/vnd.msgpack", ALL, "msgpack"),
])
def test_accept_picks_the_best_servable_format(accept: Optional[str], available: list, chosen: str) -> None:
    assert negotiate(accept, available) == chosen


@pytest.mark.parametrize("accept", ["text/html", "application/json;as=Table", "application/yaml"])
def test_nothing_acceptable_is_406(accept: str) -> None:
    assert _code(lambda: negotiate(accept, ALL)) == 406


def test_accept_order_is_q_then_position() -> None:
    ranges = parse_accept("a/x;q=0.5, b/y, c/z;q=0.9, d/w")
    assert [r[0] for r in ranges] == ["b/y", "d/w", "c/z", "a/x"]


@pytest.mark.parametrize("content_type,from_browser,result", [
    ("application/json", False, "json"),
    ("application/json; charset=utf-8", False, "json"),
    (None, False, "json"),  # a typeless body is JSON, as kube reads it...
    (None, True, 415),  # ...except from a browser
    ("text/plain", False, 415),
    ("application/cbor", False, "cbor"),
    ("application/vnd.kubernetes.protobuf", False, "protobuf"),
])
def test_request_body_format(content_type: Optional[str], from_browser: bool, result: Any) -> None:
    call = lambda: format_for_content_type(content_type, ALL, from_browser=from_browser)  # noqa: E731
    if isinstance(result, int):
        assert _code(call) == result
    else:
        assert call() == result


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(hypothesis.strategies.text(alphabet="ab =!,()<>-_./9 in notin\t", max_size=30)
                  | hypothesis.strategies.text(max_size=20))
def test_any_label_selector_text_parses_or_is_a_400(text: str) -> None:
    try:
        parsed = Selectors.parse({"labelSelector": text})
    except APIError as exc:
        assert exc.code == 400
        return
    parsed.matches(_kv(b"/r/ns/x", {"a": "b"}), b"/r/")


def test_labels_that_are_not_text_are_no_labels() -> None:
    """A kind without a schema stores labels as written: a list or null there selects as an absent label."""
    kv = types.SimpleNamespace(key=b"/r/ns/x", value=json.dumps({"metadata": {"labels": {"a": ["x"], "b": None}}}).encode())
    for selector, selected in (("a in (x)", False), ("b>1", False), ("!a", True), ("a notin (x)", True)):
        assert Selectors.parse({"labelSelector": selector}).matches(kv, b"/r/") is selected, selector
