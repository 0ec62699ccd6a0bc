package netd

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// etcdCodec encodes etcd's messages with the Marshal and Unmarshal
// methods gogoproto generated for them. gRPC's own codec hands them to
// protobuf-go, which knows them only as legacy messages: before the first
// message of each type it rebuilds the type's descriptor from the
// compressed file descriptor etcd registered (CPU on netd's way to its
// lease), and it walks every message by reflection after that. The bytes
// on the wire are the same; anything else goes to gRPC's codec.
type etcdCodec struct{ fallback encoding.CodecV2 }

// gogoMessage is what gogoproto generates for each message.
type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
	Reset()
}

func newEtcdCodec() etcdCodec { return etcdCodec{fallback: encoding.GetCodecV2(proto.Name)} }

func (c etcdCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Marshal(v)
	}
	b, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// Unmarshal decodes into v. gogoproto's Unmarshal copies the bytes it
// keeps, so data may be freed when it returns, as gRPC does.
func (c etcdCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	m.Reset() // as proto.Unmarshal does: gogoproto's merges into what is there
	return m.Unmarshal(buf.ReadOnlyData())
}

func (etcdCodec) Name() string { return proto.Name }
