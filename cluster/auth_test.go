package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

const (
	readToken  = "read-token-0123456789"
	writeToken = "write-token-0123456789"
	adminToken = "admin-token-0123456789"
)

// tlsTokenCluster starts a TLS-only cluster of three with one token per
// scope.
func tlsTokenCluster(t *testing.T) (*TestCluster, func(token string) *grpc.ClientConn) {
	return tlsTokenClusterWith(t, 3, nil)
}

// tlsTokenClusterWith is tlsTokenCluster with n nodes and tweak applied to
// each node's Config after the TLS and token settings; dial connects to the
// leader.
func tlsTokenClusterWith(t *testing.T, n int, tweak func(i int, c *Config)) (*TestCluster, func(token string) *grpc.ClientConn) {
	pki := newTestPKI(t)
	pool := pki.pool
	c := StartTestClusterWith(t, n, func(i int, cfg *Config) {
		pki.secure(t, cfg)
		cfg.AuthTokens = []Token{{readToken, ScopeRead}, {writeToken, ScopeWrite}, {adminToken, ScopeAdmin}}
		if tweak != nil {
			tweak(i, cfg)
		}
	})
	leader := c.Leader(t)
	dial := func(token string) *grpc.ClientConn {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool}))}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
		}
		conn, err := grpc.NewClient(leader.APIAddr(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	return c, dial
}

// streamOne enqueues body to "jobs" on an EnqueueStream and waits for
// the answer.
func streamOne(t *testing.T, q quorumqpb.QueueClient, body string) error {
	st, err := q.EnqueueStream(ctxT(t, 10*time.Second))
	if err != nil {
		return err
	}
	if err := st.Send(&quorumqpb.EnqueueRequest{Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte(body)}}}); err != nil && err != io.EOF {
		return err
	}
	_, err = st.Recv()
	return err
}

// Every API method has a scope chosen for it: one left out needs admin,
// which for a data-path method means producers with a write token fail.
func TestEveryMethodHasAScope(t *testing.T) {
	for _, m := range apiMethods() {
		if _, ok := methodScopes[m]; !ok {
			t.Errorf("%s has no entry in methodScopes", m)
		}
	}
}

// apiMethods returns the full name (/service/method) of every method and
// stream the API serves.
func apiMethods() []string {
	var out []string
	for _, sd := range []grpc.ServiceDesc{quorumqpb.Queue_ServiceDesc, quorumqpb.Cluster_ServiceDesc} {
		for _, m := range sd.Methods {
			out = append(out, "/"+sd.ServiceName+"/"+m.MethodName)
		}
		for _, s := range sd.Streams {
			out = append(out, "/"+sd.ServiceName+"/"+s.StreamName)
		}
	}
	return out
}

func TestTokenScopes(t *testing.T) {
	c, dial := tlsTokenCluster(t)
	admin := quorumqpb.NewQueueClient(dial(adminToken))
	if _, err := admin.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "jobs"}); err != nil {
		t.Fatalf("create with the admin token: %v", err)
	}
	write := quorumqpb.NewQueueClient(dial(writeToken))
	if _, err := write.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("one")}}}); err != nil {
		t.Fatalf("enqueue with the write token: %v", err)
	}
	// The stream producers use needs the same scope as Enqueue.
	if err := streamOne(t, write, "one-streamed"); err != nil {
		t.Fatalf("enqueue stream with the write token: %v", err)
	}
	c.WaitReplicated(t)
	hash := c.Leader(t).StateHash()

	enq := func(q quorumqpb.QueueClient) error {
		_, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("two")}}})
		return err
	}
	purge := func(q quorumqpb.QueueClient) error {
		_, err := q.Purge(ctxT(t, 10*time.Second), &quorumqpb.PurgeRequest{Queue: "jobs"})
		return err
	}
	recv := func(q quorumqpb.QueueClient) error {
		_, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "jobs", VisibilityNs: int64(time.Minute)})
		return err
	}
	refused := []struct {
		name  string
		token string
		call  func(quorumqpb.QueueClient) error
		code  codes.Code
	}{
		{"enqueue without a token", "", enq, codes.Unauthenticated},
		{"enqueue with a wrong token", "not-a-token-0123456789", enq, codes.Unauthenticated},
		{"enqueue with the read token", readToken, enq, codes.PermissionDenied},
		{"enqueue stream with the read token", readToken, func(q quorumqpb.QueueClient) error { return streamOne(t, q, "three") }, codes.PermissionDenied},
		{"receive with the read token", readToken, recv, codes.PermissionDenied},
		{"purge with the write token", writeToken, purge, codes.PermissionDenied},
		{"purge with the read token", readToken, purge, codes.PermissionDenied},
	}
	for _, r := range refused {
		err := r.call(quorumqpb.NewQueueClient(dial(r.token)))
		if status.Code(err) != r.code {
			t.Errorf("%s: %v, want %v", r.name, err, r.code)
		}
	}
	// Nothing the refused calls asked for happened.
	c.WaitReplicated(t)
	if got := c.Leader(t).StateHash(); got != hash {
		t.Errorf("state hash changed by refused calls: %s → %s", hash, got)
	}
	info, err := quorumqpb.NewQueueClient(dial(readToken)).GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "jobs"})
	if err != nil {
		t.Fatalf("get queue with the read token: %v", err)
	}
	if st := info.GetQueue().GetStats(); st.GetReady() != 2 || st.GetEnqueuedTotal() != 2 || st.GetDeliveredTotal() != 0 {
		t.Errorf("queue after refused calls: ready %d enqueued %d delivered %d, want 2 2 0", st.GetReady(), st.GetEnqueuedTotal(), st.GetDeliveredTotal())
	}
	// Cluster admin needs admin; status needs read (and fans out with the
	// node's own token).
	cl := func(tok string) quorumqpb.ClusterClient { return quorumqpb.NewClusterClient(dial(tok)) }
	if _, err := cl(writeToken).Snapshot(ctxT(t, 10*time.Second), &quorumqpb.SnapshotRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("snapshot with the write token: %v, want PermissionDenied", err)
	}
	st, err := cl(readToken).Status(ctxT(t, 10*time.Second), &quorumqpb.StatusRequest{})
	if err != nil {
		t.Fatalf("status with the read token: %v", err)
	}
	for _, n := range st.GetNodes() {
		if n.GetError() != "" {
			t.Errorf("status fan-out to %s: %s", n.GetId(), n.GetError())
		}
	}
}

func TestTLSClusterRefusesPlaintext(t *testing.T) {
	c, dial := tlsTokenCluster(t)
	if _, err := quorumqpb.NewQueueClient(dial(readToken)).ListQueues(ctxT(t, 10*time.Second), &quorumqpb.ListQueuesRequest{}); err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	conn, err := grpc.NewClient(c.Leader(t).APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = quorumqpb.NewQueueClient(conn).ListQueues(ctxT(t, 3*time.Second), &quorumqpb.ListQueuesRequest{})
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("plaintext client against a TLS node: %v, want Unavailable (handshake refused)", err)
	}
}

func TestTokenConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		tokens []Token
		want   string
	}{
		{[]Token{{"short", ScopeRead}}, "auth token 1: 5 characters, want at least 16"},
		{[]Token{{readToken, 0}}, "auth token 1: scope Scope(0): want read, write or admin"},
		{[]Token{{readToken, ScopeRead}, {readToken, ScopeAdmin}}, "auth token 2: listed twice"},
	} {
		err := checkTokens(tc.tokens)
		if !errors.Is(err, ErrConfig) || err.Error() != ErrConfig.Error()+": "+tc.want {
			t.Errorf("tokens %v: %v, want %q", tc.tokens, err, tc.want)
		}
	}
	if _, err := ParseScope("root"); err == nil || err.Error() != `scope "root": want read, write or admin` {
		t.Errorf("ParseScope(root): %v", err)
	}
}

// The single admin token (--auth-token) is held to the same length as the
// tokens of a file.
func TestShortAdminTokenIsRefused(t *testing.T) {
	pki := newTestPKI(t)
	cfg := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", AuthToken: "x"}
	pki.secure(t, &cfg)
	_, err := cfg.withDefaults()
	if want := "auth token (--auth-token): 1 characters, want at least 16"; !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
		t.Fatalf("a 1-character admin token: %v, want %q", err, want)
	}
}

func TestWrongGossipKeyDoesNotJoin(t *testing.T) {
	key := []byte("0123456789abcdef")
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.GossipKey = key })
	dir := t.TempDir()
	cfg := Config{
		NodeID: "intruder", DataDir: filepath.Join(dir, "intruder"),
		APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		Join: []string{c.Nodes[0].GossipAddr()}, LocalGossip: true, Logger: testLogger(),
		GossipKey: []byte("fedcba9876543210"),
	}
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Kill)
	// With the right key a node joins within a second or two (see
	// TestJoin*); give the wrong one several times that.
	time.Sleep(4 * time.Second)
	for _, m := range c.Leader(t).members.all() {
		if m.meta.ID == "intruder" {
			t.Fatalf("node with the wrong gossip key is a gossip member (state %s)", m.state)
		}
	}
	servers, err := c.Leader(t).configuration(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 3 {
		t.Fatalf("configuration has %d servers, want 3: %v", len(servers), servers)
	}
	if got := len(n.members.all()); got > 1 {
		t.Errorf("intruder sees %d gossip members, want only itself", got)
	}

	// The same node with the right key joins: the test above is not
	// passing for some other reason.
	n.Kill()
	cfg.GossipKey = key
	cfg.DataDir = filepath.Join(dir, "rightkey")
	cfg.NodeID = "rightkey"
	n2, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n2.Kill)
	deadline := time.Now().Add(15 * time.Second)
	for {
		servers, err := c.Leader(t).configuration(ctxT(t, 5*time.Second))
		if err == nil && len(servers) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node with the right key was not added: %v %v", servers, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
