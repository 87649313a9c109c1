package transport

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// UnaryMethods holds the unary methods of the services registered on it
// (it is a grpc.ServiceRegistrar), so that the HTTP API calls a service's
// method in process, with the gRPC server's interceptors, instead of
// through grpc.Server.ServeHTTP, which frames every call as a gRPC
// stream on goroutines and channels of its own; called directly, a call
// costs its interceptors and its method.
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

// inProcessConn is the grpc.ClientConnInterface behind the gateway's
// generated clients: a call goes to the method in UnaryMethods, in this
// process, through the gRPC server's unary interceptors, with the request
// the gateway decoded (no encoding in between).
type inProcessConn struct {
	methods   *UnaryMethods
	intercept grpc.UnaryServerInterceptor
	maxRecv   int
}

func (c *inProcessConn) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	m, ok := c.methods.methods[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "%s is not a unary method of this node", method)
	}
	req, ok := args.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s called with %T, not a protobuf message", method, args)
	}
	if size := proto.Size(req); size > c.maxRecv {
		return status.Errorf(codes.ResourceExhausted, "request is larger than the limit of %d bytes (its protobuf form, as a gRPC call would send it: %d bytes)", c.maxRecv, size)
	}
	// The generated handler decodes its own request with dec; the
	// request is decoded already, so dec leaves that one empty and the
	// interceptor chain gets the decoded one instead.
	intercept := func(ctx context.Context, _ any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if c.intercept == nil {
			return h(ctx, req)
		}
		return c.intercept(ctx, req, m.info, h)
	}
	resp, err := m.handler(m.impl, ctx, func(any) error { return nil }, intercept)
	if err != nil {
		return err
	}
	out, ok := resp.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s answered %T, not a protobuf message", method, resp)
	}
	// Move out's fields into reply rather than copy them (proto.Merge
	// would copy every body of a Receive or a Peek): out is not used
	// again, so reply may share its slices and messages.
	dst := reply.(proto.Message).ProtoReflect()
	out.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	return nil
}

func (c *inProcessConn) NewStream(_ context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Errorf(codes.Unimplemented, "%s streams: call it on the gRPC API port", method)
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
