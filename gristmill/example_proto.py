"""tf.train.Example's protobuf messages without importing TensorFlow.

`tensorflow.core.example.example_pb2` imports the whole of TensorFlow (seconds of CPU and about
1 GB), which every gristmill command and Beam worker paid before reading its first record. The
wire format is defined by TensorFlow's `example.proto` and `feature.proto`; the same messages are
declared here in a private descriptor pool, so the bytes are identical (tests/test_records.py
checks them against TensorFlow's own classes) and the two can live in one process.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "gristmill.tfexample"  # not "tensorflow": TensorFlow's pool may hold those names in the same process


def _file() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="gristmill/tfexample.proto", package=_PACKAGE, syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str], oneof: str = ""):
        msg = proto.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if oneof:
                f.oneof_index = 0
            if ftype in (field.TYPE_FLOAT, field.TYPE_INT64):
                f.options.packed = True
        return msg

    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
    message("BytesList", ("value", 1, field.TYPE_BYTES, repeated, ""))
    message("FloatList", ("value", 1, field.TYPE_FLOAT, repeated, ""))
    message("Int64List", ("value", 1, field.TYPE_INT64, repeated, ""))
    message("Feature", ("bytes_list", 1, field.TYPE_MESSAGE, optional, "BytesList"),
            ("float_list", 2, field.TYPE_MESSAGE, optional, "FloatList"),
            ("int64_list", 3, field.TYPE_MESSAGE, optional, "Int64List"), oneof="kind")
    features = message("Features", ("feature", 1, field.TYPE_MESSAGE, repeated, "Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=field.TYPE_MESSAGE, label=optional, type_name=f".{_PACKAGE}.Feature")
    message("Example", ("features", 1, field.TYPE_MESSAGE, optional, "Features"))
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _message(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


BytesList = _message("BytesList")
FloatList = _message("FloatList")
Int64List = _message("Int64List")
Feature = _message("Feature")
Features = _message("Features")
Example = _message("Example")
