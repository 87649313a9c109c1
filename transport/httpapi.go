package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// HTTPConfig configures NewHTTPHandler.
type HTTPConfig struct {
	// Methods are the node's services, registered on it as on the gRPC
	// server: every HTTP call is decoded into the request of the method
	// it names and that method is called in process.
	Methods *UnaryMethods
	// Interceptors are the gRPC server's unary interceptors (metrics,
	// memory and disk guards, leader forwarding), outermost first: they
	// run around every HTTP call as around a gRPC one.
	Interceptors []grpc.UnaryServerInterceptor
	// MaxRecvMsgSize bounds a decoded request's protobuf form, as it
	// bounds a gRPC request.
	MaxRecvMsgSize int
	// MaxNestedMessages bounds the JSON objects of a request body before
	// it is decoded, as the gRPC server's codec bounds nested messages
	// (wire.Limits.MaxNestedMessages); 0: no bound.
	MaxNestedMessages int
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
// Cluster services (quorumq.proto) with the handlers grpc-gateway
// generates from them (quorumq.pb.gw.go; see DESIGN.md for why), each
// calling its method in cfg.Methods in process, plus the OpenAPI
// document. Request bodies are JSON; a field the message does not have
// is refused (InvalidArgument), not ignored. Errors are google.rpc.Status
// as JSON: the gRPC code, the message, and the typed details (NotLeader
// with the leader hint, OutcomeUnknown, QueueError).
func NewHTTPHandler(cfg HTTPConfig) (http.Handler, error) {
	routes, err := routeMethods()
	if err != nil {
		return nil, err
	}
	// The option sets a variable of the gateway's package and touches no
	// mux; set once, so that nodes starting side by side do not race.
	strictQueryOnce.Do(func() { runtime.SetQueryParameterParser(strictQuery{})(nil) })
	conn := &inProcessConn{methods: cfg.Methods, intercept: chainUnary(cfg.Interceptors...), maxRecv: cfg.MaxRecvMsgSize}
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, jsonMarshaler{maxObjects: cfg.MaxNestedMessages}),
		runtime.WithErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
			writeJSONError(w, 0, err)
		}),
		runtime.WithRoutingErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
			code := codes.NotFound
			if httpStatus == http.StatusMethodNotAllowed {
				code = codes.Unimplemented
			}
			writeJSONError(w, httpStatus, status.Errorf(code, "no route for %s %s: the routes are in %s", r.Method, r.URL.Path, OpenAPIPath))
		}),
		// The calls' metadata is the request's headers, set by admit
		// below; the gateway's own copy of them would go unread.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithMiddlewares(func(next runtime.HandlerFunc) runtime.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
				pattern, _ := runtime.HTTPPattern(r.Context())
				method, ok := routes[r.Method+" "+pattern.String()]
				if !ok {
					writeJSONError(w, 0, status.Errorf(codes.Internal, "route %s %s names no method", r.Method, pattern))
					return
				}
				md := headerMD(r.Header)
				if cfg.Admit != nil {
					if err := cfg.Admit(r.Context(), method, md); err != nil {
						writeJSONError(w, 0, err)
						return
					}
				}
				next(w, r.WithContext(metadata.NewIncomingContext(WithViaHTTP(r.Context()), md)), params)
			}
		}),
	)
	ctx := context.Background()
	if err := quorumqpb.RegisterQueueHandlerClient(ctx, gw, quorumqpb.NewQueueClient(conn)); err != nil {
		return nil, fmt.Errorf("HTTP API routes: %w", err)
	}
	if err := quorumqpb.RegisterClusterHandlerClient(ctx, gw, quorumqpb.NewClusterClient(conn)); err != nil {
		return nil, fmt.Errorf("HTTP API routes: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+OpenAPIPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(cfg.OpenAPI)
	})
	mux.Handle("/", gw)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/quorumq.") {
			writeJSONError(w, http.StatusNotFound, status.Errorf(codes.NotFound,
				"%s is a gRPC method: call it on the gRPC API port; this port serves the routes of %s", r.URL.Path, OpenAPIPath))
			return
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
				// Chunked: read it here, so that the refusal is the
				// same as for a body of a known length.
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
		mux.ServeHTTP(w, r)
	}), nil
}

// routeMethods maps each google.api.http route of the Queue and Cluster
// services, as "VERB pattern" in the form of runtime.Pattern's String
// ("/v1/queues/{queue=*}/messages"), to its method's full name.
func routeMethods() (map[string]string, error) {
	routes := map[string]string{}
	services := quorumqpb.File_transport_quorumqpb_quorumq_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			verb, path, err := httpRoute(md)
			if err != nil {
				return nil, err
			}
			if verb == "" {
				continue
			}
			routes[verb+" "+plainVariable.ReplaceAllString(path, "{$1=*}")] = "/" + string(sd.FullName()) + "/" + string(md.Name())
		}
	}
	return routes, nil
}

// httpRoute returns the verb and path template of md's google.api.http
// rule, or "" for a method without one.
func httpRoute(md protoreflect.MethodDescriptor) (verb, path string, err error) {
	rule, _ := proto.GetExtension(md.Options().(*descriptorpb.MethodOptions), annotations.E_Http).(*annotations.HttpRule)
	if rule == nil {
		return "", "", nil
	}
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get, nil
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post, nil
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put, nil
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete, nil
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch, nil
	default:
		return "", "", fmt.Errorf("HTTP API: %s has a route of a kind this server does not serve", md.FullName())
	}
}

// plainVariable is a path variable without a pattern ("{queue}"), which
// runtime.Pattern's String writes as "{queue=*}".
var plainVariable = regexp.MustCompile(`\{([A-Za-z0-9_.]+)\}`)

// strictQueryOnce sets strictQuery as the gateway's query parser, which
// the gateway keeps for the whole process.
var strictQueryOnce sync.Once

// strictQuery is the gateway's query parser except that a parameter that
// names no field of the request is refused rather than ignored, as an
// unknown field of a body is: "?dedupid=x" must not look up nothing.
type strictQuery struct{ runtime.DefaultQueryParser }

func (q strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	md := msg.ProtoReflect().Descriptor()
	for key := range values {
		name := key
		if open := strings.LastIndexByte(key, '['); open > 0 && strings.HasSuffix(key, "]") {
			name = key[:open] // a map entry: field[key]
		}
		if !hasFieldPath(md, strings.Split(name, ".")) {
			return fmt.Errorf("unknown query parameter %q: %s has no such field", key, md.Name())
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

// hasFieldPath reports whether path names a field of md, each element by
// its proto or JSON name, through singular message fields.
func hasFieldPath(md protoreflect.MessageDescriptor, path []string) bool {
	for i, name := range path {
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			fd = md.Fields().ByJSONName(name)
		}
		if fd == nil {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return false
		}
		md = fd.Message()
	}
	return false
}

// jsonMarshaler is the API's only codec: protojson, with every field of
// an answer written (zero values too), and a request field the message
// does not have refused rather than dropped: a misspelt field
// ("dedupid") must not silently drop the caller's intent (here:
// exactly-once).
type jsonMarshaler struct {
	// maxObjects bounds the JSON objects of a request body (0: none).
	// An empty object is three bytes of JSON ("{},") and a whole message
	// once decoded, so a body within the size limit could hold millions;
	// they are counted before anything is decoded. A legal request holds
	// no more objects than nested messages plus one (a map is one object
	// for all its entries), so the bound refuses none.
	maxObjects int
}

var (
	jsonOut = protojson.MarshalOptions{EmitUnpopulated: true}
	jsonIn  = protojson.UnmarshalOptions{}
)

func (jsonMarshaler) ContentType(any) string { return "application/json" }

func (jsonMarshaler) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("HTTP API: cannot encode %T, not a protobuf message", v)
	}
	return jsonOut.Marshal(m)
}

func (jsonMarshaler) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("HTTP API: cannot decode into %T, not a protobuf message", v)
	}
	if err := jsonIn.Unmarshal(data, m); err != nil {
		return fmt.Errorf("request body is not a valid %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return nil
}

// NewDecoder reads the whole body (its size is bounded before) and
// decodes it; an empty body is io.EOF, which the generated handlers take
// as an empty request.
func (j jsonMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return fmt.Errorf("read request body: %w", err)
		}
		if len(bytes.TrimSpace(b)) == 0 {
			return io.EOF
		}
		if j.maxObjects > 0 {
			if n := jsonObjects(b); n > j.maxObjects+1 {
				return fmt.Errorf("request body holds %d JSON objects, more than %d, the most a legal request holds", n, j.maxObjects+1)
			}
		}
		return j.Unmarshal(b, v)
	})
}

// jsonObjects counts the objects in the JSON text b: the '{' outside
// strings.
func jsonObjects(b []byte) int {
	n, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString:
			if c == '\\' {
				escaped = true
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{':
			n++
		}
	}
	return n
}

func (j jsonMarshaler) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := j.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
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

// writeJSONError answers with err as google.rpc.Status JSON, with
// httpCode, or (0) the HTTP status of err's gRPC code.
func writeJSONError(w http.ResponseWriter, httpCode int, err error) {
	st := status.Convert(err)
	if httpCode == 0 {
		httpCode = runtime.HTTPStatusFromCode(st.Code())
	}
	b, merr := jsonOut.Marshal(st.Proto())
	if merr != nil {
		httpCode = http.StatusInternalServerError
		b = []byte(`{"code": 13, "message": "encode error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	_, _ = w.Write(b)
}
