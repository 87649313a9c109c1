package transport

import (
	"encoding/json"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
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
