package cluster

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Scope is what a bearer token may do. Scopes are ordered: a token with a
// higher scope may do everything a lower one may.
type Scope int

const (
	// ScopeRead observes: queue settings and stats, cluster status.
	ScopeRead Scope = iota + 1
	// ScopeWrite produces and consumes: enqueue, receive, ack, nack,
	// extend, transactions (and auto-creation of a queue on enqueue).
	ScopeWrite
	// ScopeAdmin changes queues and the cluster: create, update, delete
	// and purge queues, remove servers, transfer leadership, snapshots and
	// backups.
	ScopeAdmin
)

var scopeNames = map[Scope]string{ScopeRead: "read", ScopeWrite: "write", ScopeAdmin: "admin"}

func (s Scope) String() string {
	if n, ok := scopeNames[s]; ok {
		return n
	}
	return fmt.Sprintf("Scope(%d)", int(s))
}

// ParseScope parses "read", "write" or "admin".
func ParseScope(s string) (Scope, error) {
	for sc, name := range scopeNames {
		if s == name {
			return sc, nil
		}
	}
	return 0, fmt.Errorf("scope %q: want read, write or admin", s)
}

// Token is one bearer token and its scope.
type Token struct {
	Secret string
	Scope  Scope
}

// minTokenLen is the shortest token accepted: a token is a password sent
// with every call, so a short one is refused rather than trusted.
const minTokenLen = 16

func checkTokens(tokens []Token) error {
	seen := map[string]bool{}
	for i, t := range tokens {
		if len(t.Secret) < minTokenLen {
			return configErr("auth token %d: %d characters, want at least %d", i+1, len(t.Secret), minTokenLen)
		}
		if _, ok := scopeNames[t.Scope]; !ok {
			return configErr("auth token %d: scope %v: want read, write or admin", i+1, t.Scope)
		}
		if seen[t.Secret] {
			return configErr("auth token %d: listed twice", i+1)
		}
		seen[t.Secret] = true
	}
	return nil
}

// tokens is every configured token: AuthToken (admin) and AuthTokens.
func (c Config) tokens() []Token {
	out := append([]Token(nil), c.AuthTokens...)
	if c.AuthToken != "" {
		out = append(out, Token{Secret: c.AuthToken, Scope: ScopeAdmin})
	}
	return out
}

// peerToken is the token this node sends when it calls other nodes (the
// status fan-out needs read): the one with the highest scope.
func (c Config) peerToken() string {
	best := Token{}
	for _, t := range c.tokens() {
		if t.Scope > best.Scope {
			best = t
		}
	}
	return best.Secret
}

// methodScopes maps each API method to the scope it needs. A method not
// listed needs admin, so a new rpc is closed until someone decides.
var methodScopes = map[string]Scope{
	quorumqpb.Queue_GetQueue_FullMethodName:             ScopeRead,
	quorumqpb.Queue_ListQueues_FullMethodName:           ScopeRead,
	quorumqpb.Queue_Peek_FullMethodName:                 ScopeRead,
	quorumqpb.Queue_Lookup_FullMethodName:               ScopeRead,
	quorumqpb.Queue_Enqueue_FullMethodName:              ScopeWrite,
	quorumqpb.Queue_EnqueueStream_FullMethodName:        ScopeWrite,
	quorumqpb.Queue_Receive_FullMethodName:              ScopeWrite,
	quorumqpb.Queue_Ack_FullMethodName:                  ScopeWrite,
	quorumqpb.Queue_Nack_FullMethodName:                 ScopeWrite,
	quorumqpb.Queue_Extend_FullMethodName:               ScopeWrite,
	quorumqpb.Queue_Reject_FullMethodName:               ScopeWrite,
	quorumqpb.Queue_Redrive_FullMethodName:              ScopeWrite,
	quorumqpb.Queue_Transaction_FullMethodName:          ScopeWrite,
	quorumqpb.Queue_CreateQueue_FullMethodName:          ScopeAdmin,
	quorumqpb.Queue_UpdateQueue_FullMethodName:          ScopeAdmin,
	quorumqpb.Queue_DeleteQueue_FullMethodName:          ScopeAdmin,
	quorumqpb.Queue_Purge_FullMethodName:                ScopeAdmin,
	quorumqpb.Cluster_Status_FullMethodName:             ScopeRead,
	quorumqpb.Cluster_NodeStatus_FullMethodName:         ScopeRead,
	quorumqpb.Cluster_Members_FullMethodName:            ScopeRead,
	quorumqpb.Cluster_Leader_FullMethodName:             ScopeRead,
	quorumqpb.Cluster_RemoveServer_FullMethodName:       ScopeAdmin,
	quorumqpb.Cluster_TransferLeadership_FullMethodName: ScopeAdmin,
	quorumqpb.Cluster_Snapshot_FullMethodName:           ScopeAdmin,
	quorumqpb.Cluster_Backup_FullMethodName:             ScopeAdmin,
}

func scopeFor(method string) Scope {
	if s, ok := methodScopes[method]; ok {
		return s
	}
	return ScopeAdmin
}

// tokenAuth checks the bearer token of every API call against the
// configured tokens and the method's scope. It runs as gRPC's tap handle,
// on the call's headers, before gRPC reads or decodes the request message:
// a caller without a token costs the server no memory for its message (a
// few megabytes of empty repeated fields decode into hundreds of megabytes
// of structs), and a refused call changes nothing. Tokens are only
// accepted over TLS (Start refuses tokens without APIServerTLS), so they
// never cross the network in the clear.
type tokenAuth struct{ tokens []Token }

// tap implements tap.ServerInHandle.
func (a tokenAuth) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	return ctx, a.check(info.Header, info.FullMethodName)
}

func (a tokenAuth) check(md metadata.MD, method string) error {
	var found *Token
	for _, v := range md.Get("authorization") {
		tok, ok := strings.CutPrefix(v, "Bearer ")
		if !ok {
			continue
		}
		// Compare against every token, so the time taken does not tell
		// which one (or how much of one) matched.
		for i := range a.tokens {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(a.tokens[i].Secret)) == 1 {
				found = &a.tokens[i]
			}
		}
	}
	if found == nil {
		return status.Error(codes.Unauthenticated, `missing or wrong token: send "authorization: Bearer <token>" (quorumq --token, client.WithToken)`)
	}
	if need := scopeFor(method); found.Scope < need {
		return status.Errorf(codes.PermissionDenied, "%s needs a token with scope %s; this token has scope %s", method, need, found.Scope)
	}
	return nil
}

// bearer attaches the token to this node's own calls to other nodes.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (b bearer) RequireTransportSecurity() bool { return true }
