"""An INDEPENDENT decoder for Kubernetes' typed protobuf, for the tests (an oracle, not a test module).

Kubernetes' own ``generated.proto`` files (k8s.io/api, k8s.io/apimachinery; provisioned by
``scripts/provision-kube-proto``, which prints their include root) are compiled with grpcio-tools' protoc
into ONE descriptor set (``--descriptor_set_out --include_imports``), loaded into a private
``google.protobuf`` descriptor pool, and turned into message classes with
``message_factory.GetMessageClass``.  Nothing here imports streamcodec, storage or apiserver: what this
decodes, the official schema says.

    kp = kube_proto.load(include_root)
    Secret = kp.message("k8s.io.api.core.v1.Secret")
    api_version, kind, obj = kp.decode_object(frame)           # b"k8s\\x00" + runtime.Unknown
    events = kp.decode_watch_stream(body)                      # [(type, api_version, kind, obj), ...]
    kp.to_dict(obj)                                            # json_format.MessageToDict(preserving_proto_field_name=True)

The wire format (k8s.io/apimachinery/pkg/runtime/serializer/protobuf):

* an object is ``b"k8s\\x00"`` followed by a ``runtime.Unknown`` whose ``typeMeta`` carries apiVersion/kind
  and whose ``raw`` is the typed message (``contentEncoding``/``contentType`` empty);
* a watch stream is a sequence of frames, each a 4-byte big-endian length and then a ``metav1.WatchEvent``
  (no magic, no envelope), whose ``object.raw`` is an object as above.

Decoding is strict by default: a message (or any message nested in it) holding fields the schema does not
know raises ``UnknownFieldsError`` -- protobuf parsers would otherwise skip a wrong field number silently.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

MAGIC = b"k8s\x00"

#: The files compiled by default (protoc adds whatever they import).
DEFAULT_FILES: Tuple[str, ...] = (
    "k8s.io/apimachinery/pkg/runtime/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/schema/generated.proto",
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    "k8s.io/apimachinery/pkg/api/resource/generated.proto",
    "k8s.io/apimachinery/pkg/util/intstr/generated.proto",
    "k8s.io/api/core/v1/generated.proto",
)

CORE_V1 = "k8s.io.api.core.v1"
META_V1 = "k8s.io.apimachinery.pkg.apis.meta.v1"
RUNTIME = "k8s.io.apimachinery.pkg.runtime"


class KubeProtoError(Exception):
    """The oracle could not be built (protoc failed, files missing)."""


class DecodeError(ValueError):
    """Bytes that are not valid Kubernetes typed protobuf."""


class UnknownFieldsError(DecodeError):
    """A decoded message holds fields its schema does not define."""


def grpc_tools_include() -> str:
    """grpcio-tools' own copy of google/protobuf/*.proto (its package dir's ``_proto``)."""
    import grpc_tools

    path = os.path.join(os.path.dirname(os.path.abspath(grpc_tools.__file__)), "_proto")
    if not os.path.isfile(os.path.join(path, "google", "protobuf", "descriptor.proto")):
        raise KubeProtoError(f"grpcio-tools ships no google/protobuf/*.proto under {path}")
    return path


def compile_descriptor_set(include_root: str, files: Sequence[str] = DEFAULT_FILES) -> bytes:
    """Run grpcio-tools' protoc on FILES (paths relative to INCLUDE_ROOT); return a serialized FileDescriptorSet
    holding them and everything they import, dependencies first."""
    missing = [f for f in files if not os.path.isfile(os.path.join(include_root, f))]
    if missing:
        raise KubeProtoError(f"{include_root} lacks {', '.join(missing)} (run scripts/provision-kube-proto)")
    with tempfile.TemporaryDirectory(prefix="kube-proto-") as tmp:
        out = os.path.join(tmp, "kube.pb")
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{include_root}", f"-I{grpc_tools_include()}",
            f"--descriptor_set_out={out}", "--include_imports",
            *files,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise KubeProtoError(f"protoc failed ({proc.returncode}): {proc.stderr.strip()}")
        with open(out, "rb") as fh:
            return fh.read()


class KubeProto:
    """Message classes built from Kubernetes' .proto files, and decoders for the typed-protobuf wire format."""

    MAGIC = MAGIC

    def __init__(self, descriptor_set: bytes, include_root: Optional[str] = None) -> None:
        self.include_root = include_root
        self.descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        self.pool = descriptor_pool.DescriptorPool()
        for file_proto in self.descriptor_set.file:  # --include_imports puts dependencies first
            self.pool.Add(file_proto)
        self.files: Tuple[str, ...] = tuple(f.name for f in self.descriptor_set.file)
        self._classes: Dict[str, type] = {}
        self.Unknown = self.message(f"{RUNTIME}.Unknown")
        self.TypeMeta = self.message(f"{RUNTIME}.TypeMeta")
        self.RawExtension = self.message(f"{RUNTIME}.RawExtension")
        self.WatchEvent = self.message(f"{META_V1}.WatchEvent")

    # -- classes ---------------------------------------------------------------------------------------------

    def message(self, full_name: str) -> Any:
        """The message class of FULL_NAME, e.g. ``"k8s.io.api.core.v1.Secret"``; KeyError when not compiled."""
        cls = self._classes.get(full_name)
        if cls is None:
            try:
                desc = self.pool.FindMessageTypeByName(full_name)
            except KeyError:
                raise KeyError(f"no message {full_name!r} in the compiled files") from None
            cls = message_factory.GetMessageClass(desc)
            self._classes[full_name] = cls
        return cls

    def has_message(self, full_name: str) -> bool:
        try:
            self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return False
        return True

    def type_name(self, api_version: str, kind: str) -> str:
        """The protobuf message name of an apiVersion/kind: ``("v1", "Secret")`` -> ``k8s.io.api.core.v1.Secret``;
        ``("v1", "Status")`` -> metav1.Status; ``("apps/v1", "Deployment")`` -> ``k8s.io.api.apps.v1.Deployment``
        when that group's file was compiled; ``meta.k8s.io/v1`` kinds -> metav1."""
        if not kind:
            raise DecodeError(f"no kind in typeMeta (apiVersion {api_version!r})")
        candidates: List[str] = []
        if api_version == "v1":
            candidates = [f"{CORE_V1}.{kind}", f"{META_V1}.{kind}"]
            if kind == "Status":  # core/v1 has no Status message; the server's errors are metav1.Status
                candidates = [f"{META_V1}.Status"]
        elif api_version == "meta.k8s.io/v1":
            candidates = [f"{META_V1}.{kind}"]
        elif "/" in api_version:
            group, version = api_version.split("/", 1)
            short = group[: -len(".k8s.io")] if group.endswith(".k8s.io") else group
            candidates = [f"k8s.io.api.{short}.{version}.{kind}"]
        for name in candidates:
            if self.has_message(name):
                return name
        raise DecodeError(f"no message for apiVersion {api_version!r} kind {kind!r} (tried {', '.join(candidates) or 'nothing'})")

    # -- decoding --------------------------------------------------------------------------------------------

    def parse(self, cls_or_name: Any, data: bytes, *, strict: bool = True) -> Any:
        """Parse DATA as a message of CLS_OR_NAME (a class or a full name); strict: reject unknown fields."""
        cls = self.message(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
        msg = cls()
        try:
            msg.ParseFromString(bytes(data))
        except Exception as exc:  # google.protobuf.message.DecodeError and friends
            raise DecodeError(f"cannot parse {cls.DESCRIPTOR.full_name}: {exc}") from exc
        if strict:
            found = unknown_field_paths(msg)
            if found:
                raise UnknownFieldsError(f"{cls.DESCRIPTOR.full_name} holds fields its schema lacks: {', '.join(found)}")
        return msg

    def decode_unknown(self, frame: bytes, *, strict: bool = True) -> Any:
        """FRAME (``k8s\\x00`` + runtime.Unknown) -> the runtime.Unknown message."""
        frame = bytes(frame)
        if not frame.startswith(MAGIC):
            raise DecodeError(f"no Kubernetes protobuf magic: frame starts {frame[:8]!r}")
        unknown = self.parse(self.Unknown, frame[len(MAGIC):], strict=strict)
        if unknown.contentEncoding:
            raise DecodeError(f"unsupported runtime.Unknown contentEncoding {unknown.contentEncoding!r}")
        if unknown.contentType not in ("", "application/vnd.kubernetes.protobuf"):
            raise DecodeError(f"unexpected runtime.Unknown contentType {unknown.contentType!r}")
        return unknown

    def decode_object(self, frame: bytes, *, strict: bool = True) -> Tuple[str, str, Any]:
        """FRAME (``k8s\\x00`` + runtime.Unknown) -> ``(api_version, kind, message)``, the message typed by
        ``Unknown.typeMeta.apiVersion/kind``."""
        unknown = self.decode_unknown(frame, strict=strict)
        api_version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
        obj = self.parse(self.type_name(api_version, kind), unknown.raw, strict=strict)
        return api_version, kind, obj

    def split_frames(self, body: bytes) -> List[bytes]:
        """Kubernetes' length-delimited framing: each frame a 4-byte big-endian length, then that many bytes."""
        body = bytes(body)
        frames: List[bytes] = []
        pos = 0
        while pos < len(body):
            if len(body) - pos < 4:
                raise DecodeError(f"truncated frame header at offset {pos} ({len(body) - pos} bytes left)")
            (length,) = struct.unpack_from(">I", body, pos)
            pos += 4
            if len(body) - pos < length:
                raise DecodeError(f"truncated frame at offset {pos - 4}: length {length}, {len(body) - pos} bytes left")
            frames.append(body[pos:pos + length])
            pos += length
        return frames

    def decode_watch_event(self, frame: bytes, *, strict: bool = True) -> Tuple[str, str, str, Any]:
        """One watch frame (a metav1.WatchEvent, no magic) -> ``(type, api_version, kind, message)``."""
        event = self.parse(self.WatchEvent, frame, strict=strict)
        if not event.HasField("object"):
            raise DecodeError(f"watch event {event.type!r} has no object")
        api_version, kind, obj = self.decode_object(event.object.raw, strict=strict)
        return event.type, api_version, kind, obj

    def decode_watch_stream(self, body: bytes, *, strict: bool = True) -> List[Tuple[str, str, str, Any]]:
        """A protobuf watch response body -> ``[(type, api_version, kind, message), ...]``."""
        return [self.decode_watch_event(f, strict=strict) for f in self.split_frames(body)]

    # -- encoding (for building expected bytes in tests) --------------------------------------------------------

    def encode_object(self, msg: Message, api_version: str, kind: str) -> bytes:
        """``k8s\\x00`` + runtime.Unknown{typeMeta{apiVersion, kind}, raw=MSG}, as Kubernetes writes it."""
        unknown = self.Unknown(typeMeta=self.TypeMeta(apiVersion=api_version, kind=kind), raw=msg.SerializeToString())
        return MAGIC + unknown.SerializeToString()

    def encode_watch_frame(self, event_type: str, msg: Message, api_version: str, kind: str) -> bytes:
        """One length-prefixed watch frame holding MSG."""
        event = self.WatchEvent(type=event_type, object=self.RawExtension(raw=self.encode_object(msg, api_version, kind)))
        payload = event.SerializeToString()
        return struct.pack(">I", len(payload)) + payload

    # -- comparison --------------------------------------------------------------------------------------------

    @staticmethod
    def to_dict(msg: Message) -> Dict[str, Any]:
        """``json_format.MessageToDict(msg, preserving_proto_field_name=True)`` (bytes base64, int64 as strings)."""
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _is_repeated(field: Any) -> bool:
    """FieldDescriptor.is_repeated (protobuf >= 5.29; ``label`` is gone in 7.x), or the label on older ones."""
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def unknown_field_paths(msg: Message, path: str = "") -> List[str]:
    """Paths of fields MSG (and every message nested in it) holds that its schema does not define."""
    from google.protobuf import unknown_fields as _uf

    found: List[str] = []
    here = path or msg.DESCRIPTOR.full_name
    numbers = sorted({f.field_number for f in _uf.UnknownFieldSet(msg)})
    if numbers:
        found.append(f"{here}#{','.join(map(str, numbers))}")
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        name = f"{here}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, item in value.items():
                    found.extend(unknown_field_paths(item, f"{name}[{key!r}]"))
        elif _is_repeated(field):
            for i, item in enumerate(value):
                found.extend(unknown_field_paths(item, f"{name}[{i}]"))
        else:
            found.extend(unknown_field_paths(value, name))
    return found


def load(include_root: str, files: Iterable[str] = DEFAULT_FILES) -> KubeProto:
    """Compile FILES (default: runtime, runtime/schema, meta/v1, api/resource, util/intstr, core/v1) under
    INCLUDE_ROOT (the directory holding ``k8s.io/``) and return the oracle namespace."""
    return KubeProto(compile_descriptor_set(include_root, tuple(files)), include_root)
