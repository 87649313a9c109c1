package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// UnaryMethods holds the unary methods of the services registered on it
// (it is a grpc.ServiceRegistrar), so that the HTTP API calls a service's
// method in process, with the gRPC server's interceptors, instead of
// through grpc.Server.ServeHTTP, which frames every call as a gRPC
// stream on goroutines and channels of its own; called directly, a call
// costs its decode, its interceptors and its method.
type UnaryMethods struct {
	methods map[string]unaryMethod
}

type unaryMethod struct {
	impl    any
	handler grpc.MethodHandler
	info    *grpc.UnaryServerInfo
}

// RegisterService implements grpc.ServiceRegistrar: it records sd's unary
// methods (streams stay on the gRPC port).
func (u *UnaryMethods) RegisterService(sd *grpc.ServiceDesc, impl any) {
	if u.methods == nil {
		u.methods = make(map[string]unaryMethod)
	}
	for _, m := range sd.Methods {
		full := "/" + sd.ServiceName + "/" + m.MethodName
		u.methods[full] = unaryMethod{impl: impl, handler: m.Handler, info: &grpc.UnaryServerInfo{Server: impl, FullMethod: full}}
	}
}

// unaryTarget serves the unary methods of UnaryMethods in the Connect
// protocol with the protobuf codec: the form vanguard hands a transcoded
// REST call to its target in.
type unaryTarget struct {
	methods     *UnaryMethods
	intercept   grpc.UnaryServerInterceptor
	codec       encoding.CodecV2
	maxRecv     int
	admit       func(ctx context.Context, method string, md metadata.MD) error
	errorWriter *connect.ErrorWriter
}

func (t *unaryTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m, ok := t.methods.methods[r.URL.Path]
	if !ok {
		t.writeError(w, r, status.Errorf(codes.Unimplemented, "%s is not a unary method of this node", r.URL.Path))
		return
	}
	md := headerMD(r.Header)
	if t.admit != nil {
		if err := t.admit(r.Context(), r.URL.Path, md); err != nil {
			t.writeError(w, r, err)
			return
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(t.maxRecv)+1))
	if err != nil {
		t.writeError(w, r, status.Errorf(codes.InvalidArgument, "read request: %v", err))
		return
	}
	if len(body) > t.maxRecv {
		t.writeError(w, r, status.Errorf(codes.ResourceExhausted, "request is larger than the limit of %d bytes (its protobuf form, as a gRPC call would send it)", t.maxRecv))
		return
	}
	ctx := metadata.NewIncomingContext(WithViaHTTP(r.Context()), md)
	dec := func(v any) error {
		if err := t.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(body)}, v); err != nil {
			return status.Errorf(codes.InvalidArgument, "decode request: %v", err)
		}
		return nil
	}
	var intercept grpc.UnaryServerInterceptor
	if t.intercept != nil {
		intercept = func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return t.intercept(ctx, req, m.info, h)
		}
	}
	resp, err := m.handler(m.impl, ctx, dec, intercept)
	if err != nil {
		t.writeError(w, r, err)
		return
	}
	msg, ok := resp.(proto.Message)
	if !ok {
		t.writeError(w, r, status.Errorf(codes.Internal, "%s answered %T, not a protobuf message", r.URL.Path, resp))
		return
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		t.writeError(w, r, status.Errorf(codes.Internal, "encode answer: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/proto")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// writeError answers with err, a gRPC status error, as a Connect error
// with the same code, message and details, which vanguard turns into the
// JSON error.
func (t *unaryTarget) writeError(w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(err)
	code := st.Code()
	if code == codes.OK {
		code = codes.Unknown
	}
	ce := connect.NewError(connect.Code(code), errors.New(st.Message()))
	for _, d := range st.Proto().GetDetails() {
		if ed, derr := connect.NewErrorDetail(d); derr == nil {
			ce.AddDetail(ed)
		}
	}
	if werr := t.errorWriter.Write(w, r, ce); werr != nil {
		http.Error(w, fmt.Sprintf("write error: %v", werr), http.StatusInternalServerError)
	}
}

// chainUnary runs interceptors in order, the first outermost, as
// grpc.ChainUnaryInterceptor does.
func chainUnary(interceptors ...grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if len(interceptors) == 0 {
		return nil
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return interceptors[0](ctx, req, info, chained(interceptors[1:], info, h))
	}
}

func chained(rest []grpc.UnaryServerInterceptor, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) grpc.UnaryHandler {
	if len(rest) == 0 {
		return h
	}
	return func(ctx context.Context, req any) (any, error) {
		return rest[0](ctx, req, info, chained(rest[1:], info, h))
	}
}
