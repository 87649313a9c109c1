package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// HTTPConfig configures NewHTTPHandler.
type HTTPConfig struct {
	// Methods are the node's services, registered on it as on the gRPC
	// server: every HTTP call is transcoded into the method it names and
	// called in process.
	Methods *UnaryMethods
	// Interceptors are the gRPC server's unary interceptors (metrics,
	// memory and disk guards, leader forwarding), outermost first: they
	// run around every HTTP call as around a gRPC one.
	Interceptors []grpc.UnaryServerInterceptor
	// Codec decodes a transcoded request, as the gRPC server's codec
	// does (with its bound on nested messages).
	Codec encoding.CodecV2
	// MaxRecvMsgSize bounds a transcoded request as it bounds a gRPC one.
	MaxRecvMsgSize int
	// Admit runs before a call reaches its method, on the method
	// ("/quorumq.v1.Queue/Enqueue") and the request headers, with the
	// body not yet read: the checks a gRPC call gets in the server's tap
	// handle (bearer token and scope, memory, disk). Nil admits every
	// call.
	Admit func(ctx context.Context, method string, md metadata.MD) error
	// MaxBodyBytes bounds a request body; a larger one is refused with
	// ResourceExhausted before it is read.
	MaxBodyBytes int64
	// OpenAPI is served at /v1/openapi.json.
	OpenAPI []byte
}

// OpenAPIPath is where the HTTP API serves its OpenAPI document.
const OpenAPIPath = "/v1/openapi.json"

type viaHTTPKey struct{}

// WithViaHTTP marks ctx as the context of a call that arrived over
// HTTP/JSON (see ViaHTTP).
func WithViaHTTP(ctx context.Context) context.Context {
	return context.WithValue(ctx, viaHTTPKey{}, true)
}

// ViaHTTP reports whether a gRPC call's context belongs to a call that
// arrived over HTTP/JSON: such a caller has no leader discovery, so a
// follower forwards it to the leader instead of answering with a hint.
func ViaHTTP(ctx context.Context) bool {
	v, _ := ctx.Value(viaHTTPKey{}).(bool)
	return v
}

// NewHTTPHandler serves the google.api.http routes of the Queue and
// Cluster services (quorumq.proto) by transcoding each call, with
// connectrpc.com/vanguard (see DESIGN.md for why), into a call of the
// method in cfg.Methods, plus the OpenAPI document. Request bodies are JSON; a field the message does not have is
// refused (InvalidArgument), not ignored. Errors are google.rpc.Status as
// JSON: the gRPC code, the message, and the typed details (NotLeader with
// the leader hint, OutcomeUnknown, QueueError).
func NewHTTPHandler(cfg HTTPConfig) (http.Handler, error) {
	target := &unaryTarget{
		methods:     cfg.Methods,
		intercept:   chainUnary(cfg.Interceptors...),
		codec:       cfg.Codec,
		maxRecv:     cfg.MaxRecvMsgSize,
		admit:       cfg.Admit,
		errorWriter: connect.NewErrorWriter(),
	}
	limit := uint32(min(cfg.MaxBodyBytes, 1<<31))
	var services []*vanguard.Service
	for _, name := range []string{quorumqpb.Queue_ServiceDesc.ServiceName, quorumqpb.Cluster_ServiceDesc.ServiceName} {
		services = append(services, vanguard.NewService(name, target,
			vanguard.WithTargetProtocols(vanguard.ProtocolConnect),
			vanguard.WithTargetCodecs(vanguard.CodecProto),
			vanguard.WithNoTargetCompression(),
			vanguard.WithMaxMessageBufferBytes(limit)))
	}
	tc, err := vanguard.NewTranscoder(services, vanguard.WithCodec(strictJSON))
	if err != nil {
		return nil, fmt.Errorf("HTTP API transcoder: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+OpenAPIPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(cfg.OpenAPI)
	})
	mux.Handle("/", tc)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Vanguard would also take Connect and gRPC-Web calls at the
		// rpc paths, streams among them; this port serves the REST
		// routes only (every one unary), and the gRPC port the rest.
		if strings.HasPrefix(r.URL.Path, "/quorumq.") {
			writeJSONError(w, http.StatusNotFound, status.Errorf(codes.NotFound,
				"%s is a gRPC method: call it on the gRPC API port; this port serves the routes of %s", r.URL.Path, OpenAPIPath))
			return
		}
		// The API speaks JSON only: a body sent without a type, or as a
		// form (curl -d's default), is read as JSON.
		if ct := r.Header.Get("Content-Type"); ct == "" || ct == "application/x-www-form-urlencoded" {
			r.Header.Set("Content-Type", "application/json")
		}
		if cfg.MaxBodyBytes > 0 {
			tooLarge := func(size string) {
				writeJSONError(w, http.StatusRequestEntityTooLarge, status.Errorf(codes.ResourceExhausted,
					"request body of %s bytes is larger than the HTTP API's limit of %d bytes", size, cfg.MaxBodyBytes))
			}
			if r.ContentLength > cfg.MaxBodyBytes {
				tooLarge(fmt.Sprint(r.ContentLength))
				return
			}
			if r.ContentLength < 0 {
				// Chunked: read it here (vanguard buffers a request
				// whole anyway), so that the refusal is the same.
				body, err := io.ReadAll(io.LimitReader(r.Body, cfg.MaxBodyBytes+1))
				if err != nil {
					writeJSONError(w, http.StatusBadRequest, status.Errorf(codes.InvalidArgument, "read request body: %v", err))
					return
				}
				if int64(len(body)) > cfg.MaxBodyBytes {
					tooLarge("more than " + fmt.Sprint(cfg.MaxBodyBytes))
					return
				}
				r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			}
		}
		// Every route is unary: a flush before the end only splits the
		// answer into more writes (headers, body, end of chunks).
		mux.ServeHTTP(unflushed{w}, r)
	}), nil
}

// unflushed makes the ResponseWriter's Flush a no-op (vanguard needs a
// Flusher), so that net/http writes a small answer in one piece with its
// Content-Length.
type unflushed struct{ w http.ResponseWriter }

func (unflushed) Flush() {}

func (u unflushed) Header() http.Header         { return u.w.Header() }
func (u unflushed) Write(b []byte) (int, error) { return u.w.Write(b) }
func (u unflushed) WriteHeader(code int)        { u.w.WriteHeader(code) }

// strictJSON is vanguard's JSON codec except that an unknown field is an
// error, and a body it cannot parse is InvalidArgument (vanguard reports
// it as Unknown): a misspelt field ("dedupid") must not silently drop the
// caller's intent (here: exactly-once).
func strictJSON(res vanguard.TypeResolver) vanguard.Codec {
	c := vanguard.NewJSONCodec(res)
	c.UnmarshalOptions.DiscardUnknown = false
	return jsonCodec{c}
}

type jsonCodec struct{ *vanguard.JSONCodec }

func (c jsonCodec) Unmarshal(data []byte, msg proto.Message) error {
	if err := c.JSONCodec.Unmarshal(data, msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("request body is not a valid %s: %w", msg.ProtoReflect().Descriptor().Name(), err))
	}
	return nil
}

// headerMD turns HTTP headers into gRPC metadata (lower-case keys), as
// the server's tap handle sees them.
func headerMD(h http.Header) metadata.MD {
	md := make(metadata.MD, len(h))
	for k, v := range h {
		md[strings.ToLower(k)] = v
	}
	return md
}

// writeJSONError answers a plain HTTP request with err as
// google.rpc.Status JSON, the shape vanguard uses for every other error.
func writeJSONError(w http.ResponseWriter, httpCode int, err error) {
	st := status.Convert(err)
	b, _ := protojson.Marshal(proto.Message(st.Proto()))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	_, _ = w.Write(b)
}
