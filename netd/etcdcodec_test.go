package netd

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// countingCodec is gRPC's codec, counting the messages it was handed.
type countingCodec struct {
	encoding.CodecV2
	calls *int
}

func (c countingCodec) Marshal(v any) (mem.BufferSlice, error) {
	*c.calls++
	return c.CodecV2.Marshal(v)
}

func (c countingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*c.calls++
	return c.CodecV2.Unmarshal(data, v)
}

// etcd's messages go through their generated methods, with the bytes
// gRPC's codec would send and the message it would decode; anything else
// goes to gRPC's codec.
func TestEtcdCodec(t *testing.T) {
	grpcCodec := encoding.GetCodecV2(gproto.Name)
	var fallbacks int
	c := etcdCodec{fallback: countingCodec{grpcCodec, &fallbacks}}
	msgs := []struct {
		name string
		in   any
		out  func() any // an empty message of in's type
	}{
		{"range request", &pb.RangeRequest{Key: []byte("/berth/v1/networks/berth/leases/"), RangeEnd: []byte("/berth/v1/networks/berth/leases0"), Serializable: true},
			func() any { return &pb.RangeRequest{} }},
		{"range response", &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 42, MemberId: 7},
			Kvs: []*mvccpb.KeyValue{{Key: []byte("/k"), Value: []byte(`{"subnet":"10.244.1.0/24"}`), Lease: 99, ModRevision: 41}}, Count: 1},
			func() any { return &pb.RangeResponse{} }},
		{"txn request", &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte("/k"), Target: pb.Compare_CREATE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 0}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("/k"), Value: []byte("v"), Lease: 99}}}}},
			func() any { return &pb.TxnRequest{} }},
		{"lease grant response", &pb.LeaseGrantResponse{ID: 99, TTL: 10}, func() any { return &pb.LeaseGrantResponse{} }},
	}
	for _, m := range msgs {
		t.Run(m.name, func(t *testing.T) {
			fallbacks = 0
			got, err := c.Marshal(m.in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := grpcCodec.Marshal(m.in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Materialize(), want.Materialize()) {
				t.Fatalf("wire bytes differ from gRPC's codec:\n got %x\nwant %x", got.Materialize(), want.Materialize())
			}
			// Decoded into a message that holds something already: the
			// result is the sent message alone, as with gRPC's codec.
			out := m.out()
			if err := c.Unmarshal(want, out); err != nil {
				t.Fatal(err)
			}
			if err := c.Unmarshal(want, out); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(protoadapt.MessageV2Of(out.(protoadapt.MessageV1)), protoadapt.MessageV2Of(m.in.(protoadapt.MessageV1))) {
				t.Fatalf("decoded %v, want %v", out, m.in)
			}
			if fallbacks != 0 {
				t.Fatalf("%d calls went to gRPC's codec, want none", fallbacks)
			}
		})
	}
	t.Run("not etcd's", func(t *testing.T) {
		fallbacks = 0
		data, err := c.Marshal(wrapperspb.String("berth"))
		if err != nil {
			t.Fatal(err)
		}
		out := &wrapperspb.StringValue{}
		if err := c.Unmarshal(data, out); err != nil || out.GetValue() != "berth" {
			t.Fatalf("decoded %v, %v", out, err)
		}
		if fallbacks != 2 {
			t.Fatalf("%d calls went to gRPC's codec, want 2", fallbacks)
		}
	})
}
