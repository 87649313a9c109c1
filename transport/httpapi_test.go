package transport

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/quorumq/quorumq/docs"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Every unary rpc has an HTTP route, and the committed OpenAPI document
// (the one nodes serve) describes each: a new rpc without a route, or a
// route added without `go generate`, fails here.
func TestEveryUnaryRPCHasADocumentedHTTPRoute(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(docs.OpenAPI, &doc); err != nil {
		t.Fatalf("docs/openapi.json: %v", err)
	}
	documented := map[string]bool{}
	for _, ops := range doc.Paths {
		for _, op := range ops {
			documented[op.OperationID] = true
		}
	}
	services := quorumqpb.File_transport_quorumqpb_quorumq_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			name := string(sd.Name()) + "_" + string(md.Name())
			rule, _ := proto.GetExtension(md.Options().(*descriptorpb.MethodOptions), annotations.E_Http).(*annotations.HttpRule)
			if md.IsStreamingClient() || md.IsStreamingServer() {
				if rule != nil {
					t.Errorf("%s streams but has an HTTP rule: only unary calls are served over HTTP", name)
				}
				continue
			}
			if rule == nil {
				t.Errorf("%s has no google.api.http rule", name)
			}
			if !documented[name] {
				t.Errorf("%s is not in docs/openapi.json: run go generate ./transport/quorumqpb", name)
			}
		}
	}
}

// readWatch is a request body that records whether anything read it.
type readWatch struct{ read bool }

func (r *readWatch) Read([]byte) (int, error) { r.read = true; return 0, io.EOF }

// Every route is admitted as the method it names, before its body is
// read: a call that its token, scope, memory or disk refuses costs no
// read of its body. (The admission knows the method from the route the
// gateway matched; a route it could not name would be a call of no
// method, refused.)
func TestEveryRouteIsAdmittedAsItsMethodBeforeItsBodyIsRead(t *testing.T) {
	var admitted string
	h, err := NewHTTPHandler(HTTPConfig{
		Methods:        &UnaryMethods{},
		MaxRecvMsgSize: 1 << 20,
		Admit: func(_ context.Context, method string, _ metadata.MD) error {
			admitted = method
			return status.Error(codes.PermissionDenied, "refused by the test")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	routes := 0
	services := quorumqpb.File_transport_quorumqpb_quorumq_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			verb, path, err := httpRoute(md)
			if err != nil {
				t.Fatal(err)
			}
			if verb == "" {
				continue
			}
			path = regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(path, "v")
			body := &readWatch{}
			admitted = ""
			req := httptest.NewRequest(verb, path, body)
			req.ContentLength = 2
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			want := "/" + string(sd.FullName()) + "/" + string(md.Name())
			if w.Code != http.StatusForbidden || admitted != want || body.read {
				t.Errorf("%s %s: %d %s, admitted as %q, body read %v; want 403, admitted as %s, body unread", verb, path, w.Code, w.Body, admitted, body.read, want)
			}
			routes++
		}
	}
	if routes < 20 {
		t.Fatalf("checked %d routes, want every route of quorumq.proto", routes)
	}
}

// Braces inside strings, escaped quotes included, are not objects: a
// legal request whose values hold braces is never refused for them.
func TestJSONObjectsCountsObjectsOnly(t *testing.T) {
	for in, want := range map[string]int{
		`{}`:                                 1,
		`{"messages":[{},{"body":"e30="}]}`:  3,
		`{"a":"{{{","b":{"c":"\"{\\"}}`:      2,
		`{"a":"x\\","b":{}}`:                 2,
		`[{"k":"}"},{"k":"{"}]`:              2,
		`{"messages":[{"dedupId":"{\"}{"}]}`: 2,
	} {
		if got := jsonObjects([]byte(in)); got != want {
			t.Errorf("jsonObjects(%s) = %d, want %d", in, got, want)
		}
	}
}
