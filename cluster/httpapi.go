package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/quorumq/quorumq/docs"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/wire"
)

// startHTTP serves the HTTP/JSON API (transport.NewHTTPHandler) on
// HTTPAddr, with the API's TLS. Every call gets what a gRPC call gets:
// the tap checks (token and scope, memory, disk) before the body is read,
// the gRPC server's unary interceptors (metrics, guards, forwarding to
// the leader) around the service's method once it is decoded.
func (n *Node) startHTTP(admit tap.ServerInHandle, interceptors []grpc.UnaryServerInterceptor) error {
	if n.cfg.HTTPAddr == "" {
		return nil
	}
	h, err := transport.NewHTTPHandler(transport.HTTPConfig{
		Methods:           n.unary,
		Interceptors:      interceptors,
		MaxRecvMsgSize:    n.cfg.Limits.MaxRecvMsgSize(),
		MaxNestedMessages: n.cfg.Limits.MaxNestedMessages(),
		Admit: func(ctx context.Context, method string, md metadata.MD) error {
			_, err := admit(ctx, &tap.Info{FullMethodName: method, Header: md})
			return err
		},
		// JSON carries a body as base64 (4/3) plus field names: twice
		// what gRPC accepts lets every batch gRPC accepts through, to
		// be checked against the same limits.
		MaxBodyBytes: 2 * int64(n.cfg.Limits.MaxRecvMsgSize()),
		OpenAPI:      docs.OpenAPI,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP API listen on %q: %w", n.cfg.HTTPAddr, err)
	}
	n.httpAddr = ln.Addr().String()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	if n.cfg.APIServerTLS != nil {
		srv.TLSConfig = n.cfg.APIServerTLS.Clone()
	}
	n.http = srv
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("HTTP API server stopped", "err", err)
		}
	}()
	return nil
}

// HTTPAddr is the bound address of the HTTP/JSON API ("" without one).
func (n *Node) HTTPAddr() string { return n.httpAddr }

// leaderForwarder sends a call that came over HTTP and that this node
// refused as a follower (NotLeader, which is answered before anything is
// proposed) to the leader the refusal names, over a gRPC connection kept
// per leader address. The caller's own token goes with it, so the leader
// checks the same scope. Forwarding happens once: if the named leader
// refuses too, its refusal (with its hint) is the answer.
type leaderForwarder struct {
	n     *Node
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (f *leaderForwarder) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err == nil || !transport.ViaHTTP(ctx) {
		return resp, err
	}
	id, addr, ok := wire.LeaderHint(err)
	if !ok || addr == "" || id == f.n.cfg.NodeID {
		return resp, err
	}
	in, ok := req.(proto.Message)
	if !ok {
		return resp, err
	}
	out, ferr := newResponse(info.FullMethod)
	if ferr != nil {
		return resp, err
	}
	conn, ferr := f.conn(addr)
	if ferr != nil {
		return resp, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	octx := metadata.NewOutgoingContext(ctx, metadata.MD{"authorization": md.Get("authorization")})
	if err := conn.Invoke(octx, info.FullMethod, in, out); err != nil {
		return nil, forwardError(id, addr, err)
	}
	return out, nil
}

// forwardError is what a caller learns when the forwarded call failed.
// The leader's own answers pass as they are. A failure of the connection
// or of the deadline may have come after the leader proposed the call:
// its outcome is unknown, and a retry with the same dedup and request IDs
// is safe.
func forwardError(id, addr string, err error) error {
	if _, _, hinted := wire.LeaderHint(err); hinted {
		return err
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return wire.OutcomeUnknownError(fmt.Sprintf("forwarded to leader %s at %s: %s", id, addr, status.Convert(err).Message()))
	}
	return err
}

func (f *leaderForwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	creds := insecure.NewCredentials()
	if f.n.cfg.APIClientTLS != nil {
		creds = credentials.NewTLS(f.n.cfg.APIClientTLS)
	}
	limit := 2 * f.n.cfg.Limits.MaxRecvMsgSize()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(limit), grpc.MaxCallSendMsgSize(limit)))
	if err != nil {
		return nil, err
	}
	if f.conns == nil {
		f.conns = map[string]*grpc.ClientConn{}
	}
	f.conns[addr] = c
	return c, nil
}

func (f *leaderForwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for addr, c := range f.conns {
		c.Close()
		delete(f.conns, addr)
	}
}

// newResponse returns an empty response message of a gRPC method
// ("/quorumq.v1.Queue/Enqueue"), found in the registered descriptors.
func newResponse(method string) (proto.Message, error) {
	name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", "."))
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return nil, err
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a method", name)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}
