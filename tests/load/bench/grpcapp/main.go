// A gRPC app for tests/load/bench/grpc.sh: the service bench.Echo of
// echo.proto over h2c, as a gRPC app behind stickyd speaks.
//
//	grpcapp ADDR...
//
// Unary answers the request's message. Stream (server streaming) answers
// the request's message `count` times, `interval_ms` apart (fields 2 and 3
// of the message, as k6 and h2load send it), each sent as soon as it is
// written: a proxy that buffers a stream shows in the client's arrival
// times. Listens on every ADDR given; prints "ready" once all listen.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// raw passes messages through as bytes: the app echoes what it was sent
// and reads two varints from it, so it needs no generated code.
type raw struct{}

func (raw) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

// params reads count (field 2) and interval_ms (field 3) from a bench.Msg.
func params(msg []byte) (count, intervalMs int64) {
	count = 1
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return
		}
		msg = msg[n:]
		if typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return
			}
			switch num {
			case 2:
				count = int64(v)
			case 3:
				intervalMs = int64(v)
			}
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return
		}
		msg = msg[m:]
	}
	return
}

func unary(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	var b []byte
	if err := dec(&b); err != nil {
		return nil, err
	}
	return &b, nil
}

func stream(_ any, s grpc.ServerStream) error {
	var b []byte
	if err := s.RecvMsg(&b); err != nil {
		return err
	}
	count, interval := params(b)
	for i := int64(0); i < count; i++ {
		if i > 0 && interval > 0 {
			select {
			case <-time.After(time.Duration(interval) * time.Millisecond):
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
		if err := s.SendMsg(&b); err != nil {
			return err
		}
	}
	return nil
}

var desc = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Unary", Handler: unary}},
	Streams:     []grpc.StreamDesc{{StreamName: "Stream", Handler: stream, ServerStreams: true}},
	Metadata:    "echo.proto",
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpcapp ADDR...")
		os.Exit(2)
	}
	encoding.RegisterCodec(raw{})
	srv := grpc.NewServer()
	srv.RegisterService(&desc, struct{}{})
	errs := make(chan error, len(os.Args)-1)
	for _, addr := range os.Args[1:] {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "grpcapp: listen on %s: %v\n", addr, err)
			os.Exit(1)
		}
		go func() { errs <- srv.Serve(l) }()
	}
	fmt.Println("ready")
	if err := <-errs; err != nil {
		fmt.Fprintln(os.Stderr, "grpcapp:", err)
		os.Exit(1)
	}
}
