"""The format registry (``streamcodec.formats``) tells the truth about every format's codec."""

from __future__ import annotations

import pytest

import streamcodec
from streamcodec import PoolBuffer
from streamcodec.formats import FORMATS, by_media_type
from streamcodec.kube_schema import DEFAULT_SCHEMA

SECRET = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s", "namespace": "default"}, "data": {"k": "dg=="}}


def _encoder(name: str, **options: object) -> object:
    if name == "protobuf":  # typed: needs the schema registry
        return FORMATS[name].encoder(schema=DEFAULT_SCHEMA, **options)
    return FORMATS[name].encoder(**options)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_media_type_finds_its_format_and_encoders_say_the_first(name: str) -> None:
    fmt = FORMATS[name]
    for media_type in fmt.media_types:
        assert by_media_type(media_type) is fmt
    assert _encoder(name).content_type.split(";")[0] == fmt.media_types[0]


@pytest.mark.parametrize("name", list(FORMATS))
def test_magic_is_what_the_encoder_writes(name: str) -> None:
    frame = bytes(_encoder(name).encode(SECRET))
    fmt = FORMATS[name]
    if fmt.magic:
        assert frame.startswith(fmt.magic)
    else:  # no magic: must not be mistaken for a format that has one
        assert not any(frame.startswith(f.magic) for f in FORMATS.values() if f.magic)


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "protobuf"])
def test_list_needs_count_is_what_the_encoder_refuses(name: str) -> None:
    encoder = _encoder(name)
    try:
        encoder.encode_list_start_into(PoolBuffer(4096), kind="List", api_version="v1", metadata={}, count=None)
        refuses = False
    except ValueError:
        refuses = True
    assert refuses == (FORMATS[name].list_needs == "count")


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "protobuf"])
def test_depth_cap_is_the_encoders_and_decoders(name: str) -> None:
    fmt = FORMATS[name]
    _encoder(name, max_depth=fmt.max_depth_limit)
    fmt.decoder(max_depth=fmt.max_depth_limit)
    with pytest.raises(ValueError):
        _encoder(name, max_depth=fmt.max_depth_limit + 1)
    with pytest.raises(ValueError):
        fmt.decoder(max_depth=fmt.max_depth_limit + 1)


def test_the_deepest_allowed_object_encodes_in_every_format() -> None:
    """The cap is usable, not just accepted: an object nested to it encodes and decodes back."""
    for name in (n for n in FORMATS if n != "protobuf"):
        limit = FORMATS[name].max_depth_limit
        obj: object = "leaf"
        for _ in range(limit - 1):
            obj = {"a": obj}
        encoder = _encoder(name, max_depth=limit)
        frame = encoder.encode(obj)
        assert FORMATS[name].decoder(max_depth=limit).decode(frame) == obj, name


def test_streamcodec_provides_every_class_the_registry_names() -> None:
    for fmt in FORMATS.values():
        assert hasattr(streamcodec, fmt.encoder_class) and hasattr(streamcodec, fmt.decoder_class)
